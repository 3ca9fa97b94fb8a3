//! A deterministic generator of person records with realistic corruption: typos, dropped
//! accents, swapped given/family names, phone formats, moved addresses, missing fields, and
//! households sharing a family name, an address and sometimes an email.
//!
//! Two populations. [`Population::Country`] spreads people the way a national customer base
//! is spread: a few very common names (Zipf-distributed, so "Marie Martin" recurs) over a long
//! tail of rarer ones, thousands of postcodes, big cities denser than towns. [`Population::Town`]
//! crowds everyone into 100 given names, 110 family names and 15 postcodes, so that every
//! name has namesakes next door in whatever number the run asks for: the stress case for
//! blocking, not a picture of real customers.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::identity::CanonicalRecord;

const GIVEN: &[&str] = &[
    "Adèle", "Agnès", "Alain", "Alice", "André", "Anne", "Antoine", "Arnaud", "Aurélie", "Benoît", "Bernard", "Brigitte",
    "Camille", "Céline", "Chantal", "Charles", "Chloé", "Christian", "Claire", "Clarisse", "Clément", "Corinne", "Damien",
    "Daniel", "David", "Denis", "Didier", "Dominique", "Élise", "Élodie", "Emma", "Éric", "Estelle", "Étienne", "Fabien",
    "Fabrice", "Florence", "François", "Frédéric", "Gaëlle", "Gérard", "Guillaume", "Hélène", "Henri", "Hugo", "Inès",
    "Isabelle", "Jacques", "Jean", "Jean-Pierre", "Jérôme", "Joël", "Julie", "Julien", "Karine", "Laure", "Laurent", "Léa",
    "Louis", "Luc", "Lucie", "Manon", "Marc", "Margaux", "Marie", "Martine", "Mathieu", "Maxime", "Michel", "Monique",
    "Nathalie", "Nicolas", "Noël", "Océane", "Olivier", "Pascal", "Patrick", "Paul", "Philippe", "Pierre", "Raphaël",
    "Rémi", "Renée", "Robert", "Romain", "Sandrine", "Sébastien", "Sophie", "Stéphane", "Sylvie", "Thierry", "Thomas",
    "Valérie", "Véronique", "Vincent", "Virginie", "Xavier", "Yann", "Yves", "Zoé",
];

const FAMILY: &[&str] = &[
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau", "Laurent", "Simon", "Michel",
    "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert",
    "Fontaine", "Rousseau", "Vincent", "Müller", "Lefebvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer",
    "Garnier", "Chevalier", "François", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clément", "Morin", "Nicolas",
    "Henry", "Roussel", "Mathieu", "Gautier", "Masson", "Marchand", "Duval", "Denis", "Dumont", "Marie", "Lemaire", "Noël",
    "Meyer", "Dufour", "Meunier", "Brun", "Blanchard", "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard", "Barbier",
    "Arnaud", "Martínez", "Gérard", "Roche", "Renard", "Schmitt", "Roy", "Leroux", "Colin", "Vidal", "Caron", "Picard",
    "Roger", "Fabre", "Aubert", "Lemoine", "Renaud", "Dumas", "Lacroix", "Olivier", "Philippe", "Bourgeois", "Pierre",
    "Benoît", "Rey", "Leclerc", "Payet", "Rolland", "Leclercq", "Guillaume", "Lecomte", "de la Fontaine", "Le Gall",
    "N'Diaye", "Nguyen", "Da Silva", "Ferreira", "Kowalski", "O'Brien",
];

const STREETS: &[&str] = &[
    "rue de la Paix", "avenue Victor Hugo", "boulevard Voltaire", "rue du Moulin", "place de l'Église", "rue des Écoles",
    "chemin des Vignes", "rue Pasteur", "avenue Jean Jaurès", "rue de la Gare", "allée des Tilleuls", "rue du Château",
    "impasse des Lilas", "rue Gambetta", "quai des Orfèvres", "rue Saint-Honoré", "avenue de la République",
    "rue Nationale", "boulevard Haussmann", "rue de Verdun",
];

const CITIES: &[(&str, &str)] = &[
    ("Paris", "75011"), ("Lyon", "69003"), ("Marseille", "13006"), ("Toulouse", "31000"), ("Nice", "06000"),
    ("Nantes", "44000"), ("Strasbourg", "67000"), ("Montpellier", "34000"), ("Bordeaux", "33000"), ("Lille", "59000"),
    ("Rennes", "35000"), ("Reims", "51100"), ("Dijon", "21000"), ("Angers", "49000"), ("Grenoble", "38000"),
];

const DOMAINS: &[&str] = &["example.com", "mail.example.fr", "post.example.net", "inbox.example.org"];

const SOURCES: &[&str] = &["pos", "webshop", "ticketing"];

/// Syllables of the generated long tail of names, towns and streets: 20 × 20 × 20 family names.
const ONSETS: &[&str] = &[
    "Ber", "Mar", "Lou", "Cha", "Gui", "Ro", "Fa", "Du", "Le", "Mo", "Pa", "Ri", "Sa", "Ta", "Va", "Bo", "Ga", "Ju", "Ni", "Te",
];
const MIDDLES: &[&str] = &[
    "ran", "vet", "chon", "lar", "mi", "zin", "que", "ro", "bau", "nie", "sso", "tel", "vil", "cour", "mon", "lin", "de", "gne",
    "rel", "san",
];
const ENDINGS: &[&str] = &[
    "", "d", "t", "eau", "ier", "in", "et", "ard", "ot", "y", "ès", "on", "aux", "ic", "el", "as", "oux", "é", "ain", "ac",
];
const GIVEN_ENDINGS: &[&str] = &["", "e", "ine", "o", "a", "ian", "elle", "is"];

/// Which people the generator draws records for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Population {
    /// A national customer base: common names Zipf-distributed over a long tail, thousands
    /// of postcodes, cities denser than towns.
    #[default]
    Country,
    /// One crowded town: 100 given names, 110 family names, 15 postcodes (the stress case).
    Town,
}

/// Draws an index in `0..n` with probability proportional to `1 / (rank + 1)`.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let cumulative = (1..=n)
            .scan(0.0, |total, rank| {
                *total += 1.0 / rank as f64;
                Some(*total)
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let x = rng.random_range(0.0..*self.cumulative.last().expect("not empty"));
        self.cumulative.partition_point(|&c| c <= x).min(self.cumulative.len() - 1)
    }
}

/// Where a person lives: the postcode and the town's name.
#[derive(Clone, Debug)]
struct Place {
    postcode: String,
    city: String,
}

#[derive(Clone, Debug)]
struct Person {
    given: String,
    family: String,
    birth: (i32, u32, u32),
    email: String,
    phone: String,
    street: String,
    place: Place,
    loyalty: String,
}

/// Deterministic stream of records; `entity` ids give the ground truth.
pub struct Generator {
    rng: StdRng,
    population: Population,
    given_ranks: Zipf,
    family_ranks: Zipf,
    people: Vec<Person>,
    next_record: u64,
    /// Records per person on average (≥ 1).
    records_per_person: f64,
}

/// One generated record and the person it belongs to.
pub struct Generated {
    pub record: CanonicalRecord,
    pub entity: usize,
}

fn strip_accents(s: &str) -> String {
    deunicode::deunicode(s)
}

impl Generator {
    /// `records` records of about `records / records_per_person` people, from `seed`.
    pub fn new(seed: u64, records: usize, records_per_person: f64, population: Population) -> Generator {
        let mut g = Generator {
            rng: StdRng::seed_from_u64(seed),
            population,
            given_ranks: Zipf::new(GIVEN.len()),
            family_ranks: Zipf::new(FAMILY.len()),
            people: Vec::new(),
            next_record: 0,
            records_per_person,
        };
        let people_count = ((records as f64 / records_per_person).ceil() as usize).max(1);
        g.people.reserve(people_count);
        for i in 0..people_count {
            // one in four people lives with someone generated before (a household)
            let household = (i > 0 && g.rng.random_bool(0.25)).then(|| g.people[g.rng.random_range(0..i)].clone());
            let given = g.given_name();
            let family = match &household {
                Some(h) if g.rng.random_bool(0.8) => h.family.clone(),
                _ => g.family_name(),
            };
            let email = match &household {
                // a shared family mailbox
                Some(h) if g.rng.random_bool(0.3) => h.email.clone(),
                _ => format!(
                    "{}.{}{}@{}",
                    strip_accents(&given).to_lowercase().replace(' ', ""),
                    strip_accents(&family).to_lowercase().replace([' ', '\''], ""),
                    i,
                    DOMAINS[g.rng.random_range(0..DOMAINS.len())]
                ),
            };
            let (street, place) = match &household {
                Some(h) => (h.street.clone(), h.place.clone()),
                None => g.address(),
            };
            let rng = &mut g.rng;
            g.people.push(Person {
                given,
                family,
                birth: (rng.random_range(1940..2006), rng.random_range(1..=12), rng.random_range(1..=28)),
                email,
                phone: format!("06{:08}", rng.random_range(0..100_000_000u32)),
                street,
                place,
                loyalty: format!("L{:09}", i),
            });
        }
        g
    }

    /// A tail name of syllables: `onset` + middle + ending, all drawn uniformly.
    fn syllables(&mut self, endings: &[&str]) -> String {
        let rng = &mut self.rng;
        let (a, b, c) =
            (rng.random_range(0..ONSETS.len()), rng.random_range(0..MIDDLES.len()), rng.random_range(0..endings.len()));
        format!("{}{}{}", ONSETS[a], MIDDLES[b], endings[c])
    }

    fn given_name(&mut self) -> String {
        match self.population {
            Population::Town => GIVEN[self.rng.random_range(0..GIVEN.len())].to_string(),
            // about 60 % of people carry one of the common given names
            Population::Country if self.rng.random_bool(0.6) => GIVEN[self.given_ranks.sample(&mut self.rng)].to_string(),
            Population::Country => self.syllables(GIVEN_ENDINGS),
        }
    }

    fn family_name(&mut self) -> String {
        match self.population {
            Population::Town => FAMILY[self.rng.random_range(0..FAMILY.len())].to_string(),
            // the most common family names together cover about 15 % of people
            Population::Country if self.rng.random_bool(0.15) => {
                FAMILY[self.family_ranks.sample(&mut self.rng)].to_string()
            }
            Population::Country => self.syllables(ENDINGS),
        }
    }

    /// A street address and its place: for a new household, and for a move.
    fn address(&mut self) -> (String, Place) {
        let number = self.rng.random_range(1..200);
        let city = |(name, postcode): (&str, &str)| Place { postcode: postcode.to_string(), city: name.to_string() };
        match self.population {
            Population::Town => {
                let street = STREETS[self.rng.random_range(0..STREETS.len())];
                (format!("{number} {street}"), city(CITIES[self.rng.random_range(0..CITIES.len())]))
            }
            Population::Country => {
                let street = match self.rng.random_bool(0.5) {
                    true => STREETS[self.rng.random_range(0..STREETS.len())].to_string(),
                    false => format!("rue {}", self.syllables(ENDINGS)),
                };
                // three people in ten live in one of the big cities, in one of ten districts
                let place = if self.rng.random_bool(0.3) {
                    let (name, postcode) = CITIES[self.rng.random_range(0..CITIES.len())];
                    let district: u32 = self.rng.random_range(0..10);
                    let base: u32 = postcode.parse().expect("numeric postcode");
                    Place { postcode: format!("{:05}", base + district), city: name.to_string() }
                } else {
                    let (department, commune) = (self.rng.random_range(1..=95usize), self.rng.random_range(0..100usize));
                    let name = format!(
                        "{}{}{}",
                        ONSETS[commune % ONSETS.len()],
                        MIDDLES[(commune / ONSETS.len() + department) % MIDDLES.len()],
                        ["ville", "court", "mont", "bourg", "lès-Bains"][department % 5]
                    );
                    Place { postcode: format!("{department:02}{:03}", commune * 10), city: name }
                };
                (format!("{number} {street}"), place)
            }
        }
    }

    pub fn people(&self) -> usize {
        self.people.len()
    }

    fn typo(&mut self, s: &str) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        if chars.len() < 3 {
            return s.to_string();
        }
        let i = self.rng.random_range(1..chars.len() - 1);
        match self.rng.random_range(0..3) {
            0 => chars.swap(i, i + 1),
            1 => {
                chars.remove(i);
            }
            _ => chars[i] = (b'a' + self.rng.random_range(0..26u8)) as char,
        }
        chars.into_iter().collect()
    }

    fn phone_format(&mut self, digits: &str) -> String {
        match self.rng.random_range(0..4) {
            0 => digits.to_string(),
            1 => format!("+33{}", &digits[1..]),
            2 => digits.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).expect("ascii")).collect::<Vec<_>>().join(" "),
            _ => format!("+33 (0){}", &digits[1..]),
        }
    }

    /// The next record: a person drawn at random (the first pass covers everyone once, so
    /// every person has at least one record), with corruption.
    pub fn next_record(&mut self) -> Generated {
        let n = self.next_record;
        self.next_record += 1;
        let entity = if (n as usize) < self.people.len() { n as usize } else { self.rng.random_range(0..self.people.len()) };
        let p = self.people[entity].clone();
        let source = SOURCES[self.rng.random_range(0..SOURCES.len())];
        let mut a = BTreeMap::new();
        let mut given = p.given.clone();
        let mut family = p.family.clone();
        if self.rng.random_bool(0.2) {
            given = strip_accents(&given);
            family = strip_accents(&family);
        }
        if self.rng.random_bool(0.08) {
            given = self.typo(&given);
        }
        if self.rng.random_bool(0.08) {
            family = self.typo(&family);
        }
        if self.rng.random_bool(0.03) {
            std::mem::swap(&mut given, &mut family);
        }
        if self.rng.random_bool(0.3) {
            given = given.to_uppercase();
            family = family.to_uppercase();
        }
        a.insert("givenName".to_string(), given);
        a.insert("familyName".to_string(), family);
        let (y, m, d) = p.birth;
        if self.rng.random_bool(0.7) {
            let date = match self.rng.random_range(0..3) {
                0 => format!("{y:04}-{m:02}-{d:02}"),
                1 => format!("{d:02}/{m:02}/{y:04}"),
                _ => format!("{y:04}{m:02}{d:02}"),
            };
            a.insert("birthDate".to_string(), date);
        }
        if self.rng.random_bool(0.75) {
            let email = if self.rng.random_bool(0.05) { self.typo(&p.email) } else { p.email.clone() };
            a.insert("email".to_string(), if self.rng.random_bool(0.2) { email.to_uppercase() } else { email });
        }
        if self.rng.random_bool(0.6) {
            let phone = self.phone_format(&p.phone);
            a.insert("phone".to_string(), phone);
        }
        if self.rng.random_bool(0.6) {
            // one record in ten comes from after a move
            let (street, place) = if self.rng.random_bool(0.1) { self.address() } else { (p.street.clone(), p.place.clone()) };
            a.insert("street".to_string(), street);
            a.insert("postcode".to_string(), place.postcode);
            a.insert("city".to_string(), place.city);
        }
        if source == "pos" {
            a.insert("identifiers.loyaltyId".to_string(), p.loyalty.clone());
        }
        Generated {
            record: CanonicalRecord {
                source: source.to_string(),
                source_record_id: format!("r{n}"),
                observed_at_ms: 1_700_000_000_000 + n as i64 * 1000,
                attributes: a,
            },
            entity,
        }
    }

    pub fn records_per_person(&self) -> f64 {
        self.records_per_person
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_covers_everyone() {
        let take = |seed| {
            let mut g = Generator::new(seed, 300, 3.0, Population::Country);
            (0..300).map(|_| g.next_record()).map(|r| (r.entity, r.record)).collect::<Vec<_>>()
        };
        let a = take(7);
        assert_eq!(a, take(7));
        assert_ne!(a, take(8));
        let entities: std::collections::BTreeSet<usize> = a.iter().map(|(e, _)| *e).collect();
        assert_eq!(entities.len(), 100);
    }

    /// A country spreads people over thousands of postcodes and a long tail of names, yet
    /// keeps a few names common; the town crowds everyone into its 15 postcodes.
    #[test]
    fn a_country_is_spread_out_and_a_town_crowded() {
        use std::collections::HashMap;
        let records = |population| {
            let mut g = Generator::new(3, 30_000, 3.0, population);
            (0..30_000).map(|_| g.next_record().record.attributes).collect::<Vec<_>>()
        };
        let count = |records: &[BTreeMap<String, String>], attribute: &str| {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for value in records.iter().filter_map(|a| a.get(attribute)) {
                *counts.entry(strip_accents(value).to_lowercase()).or_default() += 1;
            }
            counts
        };
        let country = records(Population::Country);
        let postcodes = count(&country, "postcode");
        let families = count(&country, "familyName");
        assert!(postcodes.len() > 3000, "{} postcodes", postcodes.len());
        assert!(families.len() > 4000, "{} family names", families.len());
        let commonest = families.values().max().copied().unwrap_or(0);
        assert!(commonest * 100 > country.len(), "the commonest family name is on {commonest} records");
        assert!(count(&records(Population::Town), "postcode").len() <= CITIES.len());
    }
}

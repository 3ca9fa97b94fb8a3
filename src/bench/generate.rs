//! A deterministic generator of person records with realistic corruption: typos, dropped
//! accents, swapped given/family names, phone formats, moved addresses, missing fields, and
//! households sharing a family name, an address and sometimes an email.

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

#[derive(Clone, Debug)]
struct Person {
    given: &'static str,
    family: &'static str,
    birth: (i32, u32, u32),
    email: String,
    phone: String,
    street: String,
    city: usize,
    loyalty: String,
}

/// Deterministic stream of records; `entity` ids give the ground truth.
pub struct Generator {
    rng: StdRng,
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
    pub fn new(seed: u64, records: usize, records_per_person: f64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let people_count = ((records as f64 / records_per_person).ceil() as usize).max(1);
        let mut people: Vec<Person> = Vec::with_capacity(people_count);
        for i in 0..people_count {
            // one in four people lives with someone generated before (a household)
            let household = (i > 0 && rng.random_bool(0.25)).then(|| people[rng.random_range(0..i)].clone());
            let given = GIVEN[rng.random_range(0..GIVEN.len())];
            let family = match &household {
                Some(h) if rng.random_bool(0.8) => h.family,
                _ => FAMILY[rng.random_range(0..FAMILY.len())],
            };
            let email = match &household {
                // a shared family mailbox
                Some(h) if rng.random_bool(0.3) => h.email.clone(),
                _ => format!(
                    "{}.{}{}@{}",
                    strip_accents(given).to_lowercase().replace(' ', ""),
                    strip_accents(family).to_lowercase().replace([' ', '\''], ""),
                    i,
                    DOMAINS[rng.random_range(0..DOMAINS.len())]
                ),
            };
            let (street, city) = match &household {
                Some(h) => (h.street.clone(), h.city),
                None => (
                    format!("{} {}", rng.random_range(1..200), STREETS[rng.random_range(0..STREETS.len())]),
                    rng.random_range(0..CITIES.len()),
                ),
            };
            people.push(Person {
                given,
                family,
                birth: (rng.random_range(1940..2006), rng.random_range(1..=12), rng.random_range(1..=28)),
                email,
                phone: format!("06{:08}", rng.random_range(0..100_000_000u32)),
                street,
                city,
                loyalty: format!("L{:09}", i),
            });
        }
        Generator { rng, people, next_record: 0, records_per_person }
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
        let mut given = p.given.to_string();
        let mut family = p.family.to_string();
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
            let (street, city) = if self.rng.random_bool(0.1) {
                (
                    format!("{} {}", self.rng.random_range(1..200), STREETS[self.rng.random_range(0..STREETS.len())]),
                    self.rng.random_range(0..CITIES.len()),
                )
            } else {
                (p.street.clone(), p.city)
            };
            a.insert("street".to_string(), street);
            a.insert("postcode".to_string(), CITIES[city].1.to_string());
            a.insert("city".to_string(), CITIES[city].0.to_string());
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
            let mut g = Generator::new(seed, 300, 3.0);
            (0..300).map(|_| g.next_record()).map(|r| (r.entity, r.record)).collect::<Vec<_>>()
        };
        let a = take(7);
        assert_eq!(a, take(7));
        assert_ne!(a, take(8));
        let entities: std::collections::BTreeSet<usize> = a.iter().map(|(e, _)| *e).collect();
        assert_eq!(entities.len(), 100);
    }
}

//! The profile API over a real socket, fed through intake and the matcher, on SQLite and PostgreSQL.

mod common;

use common::{Client, ERASE_TOKEN, READ_TOKEN, TestStore, WRITE_TOKEN, resolver, worker};
use serde_json::{Value, json};

on_both_stores!(
    profiles_lookup_explain_and_timeline,
    review_merge_unmerge_and_quarantine,
    lists_bound_their_limit_and_page_with_a_cursor,
    explanations_say_what_linked_each_record_and_what_fell_short,
    a_merged_away_id_leads_to_its_records_after_an_unmerge,
    the_review_queue_filters_and_counts_by_status,
    a_session_names_its_scopes_and_the_console_is_served,
);

async fn profiles_lookup_explain_and_timeline(t: TestStore) {
    let c = Client::new(&t).await;
    c.send("webshop", json!({"id": "w1", "givenName": "Zoé", "familyName": "Nguyen", "email": "zoe@example.com", "postcode": "75011"})).await;
    c.send("pos", json!({"id": "p1", "givenName": "ZOE", "familyName": "NGUYEN", "email": " ZOE@example.com", "identifiers": {"loyaltyId": "L77"}})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();

    let (status, found) = c.get("/v1/profiles/lookup?email=Zoe@Example.com", READ_TOKEN).await;
    assert_eq!(status, 200, "{found}");
    let profiles = found["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 1);
    let id = profiles[0]["id"].as_str().unwrap().to_string();
    assert_eq!(profiles[0]["recordCount"], 2);
    assert_eq!(profiles[0]["golden"]["attributes"]["identifiers.loyaltyId"]["value"], "L77");

    for query in ["identifier=loyaltyId:L77", "source=pos&sourceRecordId=p1"] {
        let (_, other) = c.get(&format!("/v1/profiles/lookup?{query}"), READ_TOKEN).await;
        assert_eq!(other["profiles"][0]["id"], id.as_str(), "{query}");
    }
    let (_, searched) = c.get("/v1/profiles/search?familyName=nguyen&postcode=75011", READ_TOKEN).await;
    assert_eq!(searched["profiles"][0]["id"], id.as_str());
    let (_, none) = c.get("/v1/profiles/search?familyName=nguyen&postcode=13006", READ_TOKEN).await;
    assert_eq!(none["profiles"], json!([]));

    let (status, profile) = c.get(&format!("/v1/profiles/{id}"), READ_TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(profile["id"], id.as_str());
    let (_, explanation) = c.get(&format!("/v1/profiles/{id}/explanation"), READ_TOKEN).await;
    let links = explanation["links"].as_array().unwrap();
    assert_eq!(links[1]["evidence"]["decision"], "linked");
    let pair = &links[1]["evidence"]["links"][0]["pair"];
    assert!(pair["rule"] == "email-given-name" || pair["probability"].as_f64().unwrap() > 0.95, "{pair}");
    let (_, timeline) = c.get(&format!("/v1/profiles/{id}/timeline"), READ_TOKEN).await;
    assert_eq!(timeline["records"].as_array().unwrap().len(), 2);
    assert!(timeline["events"].as_array().unwrap().iter().any(|e| e["type"] == "profile.created"));

    // errors are JSON with stable codes; tokens are checked
    assert_eq!(c.get("/v1/profiles/p999999", READ_TOKEN).await.1["error"]["code"], "not_found");
    assert_eq!(c.get("/v1/profiles/abc", READ_TOKEN).await.1["error"]["code"], "invalid_id");
    assert_eq!(c.get(&format!("/v1/profiles/{id}"), "nope").await.0, 401);
    let (status, body) = c.post(&format!("/v1/profiles/{id}/merge"), READ_TOKEN, json!({"other": id})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));

    let doc: Value = c.http.get(format!("{}/openapi.json", c.api)).send().await.unwrap().json().await.unwrap();
    assert!(doc["paths"]["/v1/profiles/{id}"]["get"].is_object());
    assert!(doc["paths"]["/v1/review/{id}/approve"]["post"].is_object());
}

async fn review_merge_unmerge_and_quarantine(t: TestStore) {
    let c = Client::new(&t).await;
    // same name, nothing else in common: uncertain, goes to review
    c.send("webshop", json!({"id": "a", "givenName": "Ann", "familyName": "Lee", "email": "ann@example.com"})).await;
    c.send("pos", json!({"id": "b", "givenName": "Ann", "familyName": "Lee", "phone": "0611223344"})).await;
    c.send("pos", json!({"id": "c", "givenName": "Ann", "familyName": "Lee", "phone": "0699887766"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let (_, review) = c.get("/v1/review", READ_TOKEN).await;
    let items = review["items"].as_array().unwrap().clone();
    assert!(items.len() >= 2, "{review}");
    assert_eq!(items[0]["reason"], "uncertain");

    // approve = merge the two profiles
    let first = &items[0];
    let (status, merged) = c.post(&format!("/v1/review/{}/approve", first["id"]), WRITE_TOKEN, json!({})).await;
    assert_eq!(status, 200, "{merged}");
    let survivor = merged["survivor"].as_str().unwrap().to_string();
    for p in [&first["profile"], &first["otherProfile"]] {
        let (_, profile) = c.get(&format!("/v1/profiles/{}", p.as_str().unwrap()), READ_TOKEN).await;
        assert_eq!(profile["id"], survivor.as_str(), "both ids resolve to the survivor");
    }
    assert_eq!(c.post(&format!("/v1/review/{}/approve", first["id"]), WRITE_TOKEN, json!({})).await.0, 400);
    // a profile with itself, or two ids that are one profile already: refused, nothing sent
    let events = t.store.events_after(0, 1000).await.unwrap().len();
    let (status, body) = c.post(&format!("/v1/profiles/{survivor}/merge"), WRITE_TOKEN, json!({"other": survivor})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let absorbed = [&first["profile"], &first["otherProfile"]].into_iter().map(|p| p.as_str().unwrap()).find(|p| *p != survivor).unwrap();
    let (status, body) = c.post(&format!("/v1/profiles/{survivor}/merge"), WRITE_TOKEN, json!({"other": absorbed})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_merged")), "{body}");
    assert_eq!(t.store.events_after(0, 1000).await.unwrap().len(), events, "no event for a refused merge");

    // reject = never merge: a manual merge of that pair is refused
    let second = items.iter().find(|i| i["id"] != first["id"]).unwrap();
    let (status, _) = c.post(&format!("/v1/review/{}/reject", second["id"]), WRITE_TOKEN, json!({})).await;
    assert_eq!(status, 204);
    let a = t.store.record(second["recordId"].as_i64().unwrap()).await.unwrap().unwrap().profile_id;
    let b = t.store.record(second["otherRecordId"].as_i64().unwrap()).await.unwrap().unwrap().profile_id;
    let (status, body) = c.post(&format!("/v1/profiles/p{a}/merge"), WRITE_TOKEN, json!({"other": format!("p{b}")})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("never_merge")), "{body}");

    // unmerge nothing: refused, no empty profile.unmerged event
    let (status, body) = c.post(&format!("/v1/profiles/{survivor}/unmerge"), WRITE_TOKEN, json!({"records": []})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert_eq!(t.store.events_after(0, 1000).await.unwrap().len(), events, "no event for a refused unmerge");

    // unmerge a record out of the survivor
    let (_, timeline) = c.get(&format!("/v1/profiles/{survivor}/timeline"), READ_TOKEN).await;
    let record = timeline["records"][1]["id"].as_i64().unwrap();
    let (status, split) = c.post(&format!("/v1/profiles/{survivor}/unmerge"), WRITE_TOKEN, json!({"records": [record]})).await;
    assert_eq!(status, 200, "{split}");
    let created = split["created"][0].as_str().unwrap();
    let (_, moved) = c.get(&format!("/v1/profiles/{created}"), READ_TOKEN).await;
    assert_eq!(moved["recordCount"], 1);

    // quarantine: list, replay still invalid, replay after the record is fixed at the source
    let body = c.send("webshop", json!({"id": "q1", "email": "broken"})).await;
    assert_eq!(body["error"]["code"], "validation_failed");
    let (_, list) = c.get("/v1/quarantine?filter=webshop", READ_TOKEN).await;
    let entry = list["entries"][0]["id"].as_i64().unwrap();
    assert_eq!(list["entries"][0]["errors"][0]["field"], "email");
    let (status, body) = c.post(&format!("/v1/quarantine/{entry}/replay"), WRITE_TOKEN, json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("validation_failed")));
    // deleted for good, with the write scope
    let delete = |token: &'static str| c.http.delete(format!("{}/v1/quarantine/{entry}", c.api)).bearer_auth(token).send();
    assert_eq!(delete(READ_TOKEN).await.unwrap().status(), 403);
    assert_eq!(delete(WRITE_TOKEN).await.unwrap().status(), 204);
    assert!(t.store.quarantine_entry(entry).await.unwrap().is_none());
    assert_eq!(delete(WRITE_TOKEN).await.unwrap().status(), 404);
}

/// Every list refuses a limit out of its range (never cut silently to its maximum) and pages
/// with a cursor, `nextAfter`, present while a page is full.
async fn lists_bound_their_limit_and_page_with_a_cursor(t: TestStore) {
    let c = Client::new(&t).await;
    c.send("webshop", json!({"id": "a", "givenName": "Ann", "familyName": "Lee", "email": "ann@example.com"})).await;
    c.send("pos", json!({"id": "b", "givenName": "Ann", "familyName": "Lee", "phone": "0611223344"})).await;
    c.send("pos", json!({"id": "c", "givenName": "Ann", "familyName": "Lee", "phone": "0699887766"})).await;
    c.send("webshop", json!({"id": "q1", "email": "broken"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();

    for list in ["/v1/review", "/v1/quarantine", "/v1/profiles/search?familyName=Lee", "/v1/erasures"] {
        let sep = if list.contains('?') { '&' } else { '?' };
        for bad in ["0", "-1", "100000", "lots"] {
            let (status, body) = c.get(&format!("{list}{sep}limit={bad}"), ERASE_TOKEN).await;
            assert_eq!(status, 400, "{list} limit={bad}: {body}");
            assert!(matches!(body["error"]["code"].as_str(), Some("invalid_limit" | "bad_request")), "{body}");
        }
    }
    // the review queue, one item a page
    let (status, first) = c.get("/v1/review?limit=1", READ_TOKEN).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let cursor = first["nextAfter"].as_i64().expect("a full page has a next cursor");
    let (_, second) = c.get(&format!("/v1/review?limit=1&after={cursor}"), READ_TOKEN).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(second["items"][0]["id"], first["items"][0]["id"]);
    let (_, all) = c.get("/v1/review?limit=10", READ_TOKEN).await;
    assert!(all["nextAfter"].is_null(), "a page that is not full is the last: {all}");
    // search, by profile id
    let (_, page) = c.get("/v1/profiles/search?familyName=Lee&limit=2", READ_TOKEN).await;
    assert_eq!(page["profiles"].as_array().unwrap().len(), 2, "{page}");
    let after = page["nextAfter"].as_str().expect("search pages too");
    let (_, rest) = c.get(&format!("/v1/profiles/search?familyName=Lee&limit=2&after={after}"), READ_TOKEN).await;
    assert_eq!(rest["profiles"].as_array().unwrap().len(), 1, "{rest}");
    // the erasure audit lists what was erased
    let (status, _) = c.post("/v1/erasures", ERASE_TOKEN, json!({"attribute": "email", "value": "ann@example.com", "reason": "subject-request"})).await;
    assert_eq!(status, 200);
    let (status, audit) = c.get("/v1/erasures", ERASE_TOKEN).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["erasures"][0]["reason"], "subject-request");
    assert_eq!(c.get("/v1/erasures", READ_TOKEN).await.0, 403, "the audit needs the erase scope");
}

/// The explanation of a profile, with its links by source record id.
async fn explained(c: &Client, profile: &str) -> std::collections::BTreeMap<String, Value> {
    let (status, explanation) = c.get(&format!("/v1/profiles/{profile}/explanation"), READ_TOKEN).await;
    assert_eq!(status, 200, "{explanation}");
    explanation["links"].as_array().unwrap().iter().map(|l| (l["sourceRecordId"].as_str().unwrap().to_string(), l["evidence"].clone())).collect()
}

async fn profile_of(c: &Client, source: &str, id: &str) -> String {
    let (_, found) = c.get(&format!("/v1/profiles/lookup?source={source}&sourceRecordId={id}"), READ_TOKEN).await;
    found["profiles"][0]["id"].as_str().unwrap().to_string()
}

/// A record that started a profile lists the profiles it was compared with and why each fell
/// short; a record joined through an approved review says which review, who approved it and
/// when.
async fn explanations_say_what_linked_each_record_and_what_fell_short(t: TestStore) {
    let c = Client::new(&t).await;
    c.send("webshop", json!({"id": "a", "givenName": "Ann", "familyName": "Lee", "email": "ann@example.com"})).await;
    c.send("pos", json!({"id": "b", "givenName": "Ann", "familyName": "Lee", "phone": "0611223344"})).await;
    c.send("pos", json!({"id": "c", "givenName": "Ann", "familyName": "Lee", "phone": "0699887766", "birthDate": "1990-01-01"})).await;
    c.send("pos", json!({"id": "d", "givenName": "Ann", "familyName": "Lee", "phone": "0699887766", "birthDate": "1970-05-05"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let (pa, pb) = (profile_of(&c, "webshop", "a").await, profile_of(&c, "pos", "b").await);

    // b started a profile: Ann's email profile was a candidate, uncertain (it went to review)
    let b = &explained(&c, &pb).await["b"];
    assert_eq!(b["decision"], "new", "{b}");
    let policy = common::config().matching.model.thresholds;
    let thresholds = (b["thresholds"]["mergeProbability"].as_f64().unwrap(), b["thresholds"]["reviewProbability"].as_f64().unwrap());
    assert_eq!(thresholds, (policy.merge, policy.review));
    let candidate = &b["candidates"][0];
    assert_eq!(candidate["profileId"].as_i64().map(|p| format!("p{p}")), Some(pa.clone()), "{b}");
    assert_eq!(candidate["shortfall"], "uncertain");
    assert!(candidate["pair"]["comparisons"].as_array().is_some_and(|c| !c.is_empty()), "{candidate}");
    // every candidate of every new record stands where its score puts it
    for profile in [&pa, &pb, &profile_of(&c, "pos", "c").await, &profile_of(&c, "pos", "d").await] {
        for evidence in explained(&c, profile).await.values().filter(|e| e["decision"] == "new") {
            for candidate in evidence["candidates"].as_array().unwrap() {
                let p = candidate["probability"].as_f64().unwrap();
                let expected = match candidate["pair"]["forbiddenBy"].as_str() {
                    Some(_) => "neverMerge",
                    None if p >= thresholds.1 => "uncertain",
                    None => "belowReview",
                };
                assert_eq!(candidate["shortfall"], expected, "{candidate}");
            }
        }
    }
    // d and c differ on their birth dates: a never-merge constraint, shown as such
    let d = &explained(&c, &profile_of(&c, "pos", "d").await).await["d"];
    let c_profile = profile_of(&c, "pos", "c").await;
    let against_c = d["candidates"].as_array().unwrap().iter().find(|k| format!("p{}", k["profileId"]) == c_profile).unwrap();
    assert_eq!(against_c["shortfall"], "neverMerge", "{d}");

    // approving the review of a and b merges them; b is now explained by that review
    let (_, review) = c.get("/v1/review?limit=100", READ_TOKEN).await;
    let item = review["items"].as_array().unwrap().iter().find(|i| i["profile"] == pb.as_str() && i["otherProfile"] == pa.as_str()).unwrap().clone();
    let (status, merged) = c.post(&format!("/v1/review/{}/approve", item["id"]), WRITE_TOKEN, json!({})).await;
    assert_eq!(status, 200, "{merged}");
    let links = explained(&c, merged["survivor"].as_str().unwrap()).await;
    assert_eq!(links["a"]["decision"], "new", "the record that started the survivor");
    let b = &links["b"];
    assert_eq!(b["decision"], "review", "{b}");
    assert_eq!((&b["reviewId"], &b["approvedBy"]), (&item["id"], &json!("writer")));
    assert!(b["approvedAtMs"].as_i64().is_some_and(|at| at > 0), "{b}");
    assert_eq!((&b["recordId"], &b["otherRecordId"]), (&item["recordId"], &item["otherRecordId"]));
    assert_eq!(b["probability"], item["probability"]);
    assert!(b["pair"]["comparisons"].is_array(), "the evidence the reviewer saw: {b}");
}

/// A profile merged into another by hand and split out again: its id leads to the profile
/// holding its records, or, when the unmerge split them up, answers 409 naming the profiles
/// that hold them.
async fn a_merged_away_id_leads_to_its_records_after_an_unmerge(t: TestStore) {
    let c = Client::new(&t).await;
    c.send("webshop", json!({"id": "ann", "givenName": "Ann", "familyName": "Lee", "email": "ann@example.com"})).await;
    for id in ["bob1", "bob2"] {
        c.send("pos", json!({"id": id, "givenName": "Bob", "familyName": "Kim", "phone": "0699887766", "birthDate": "1980-02-03"})).await;
    }
    c.send("webshop", json!({"id": "cyd", "givenName": "Cyd", "familyName": "Roe", "email": "cyd@example.com"})).await;
    for id in ["dee1", "dee2"] {
        c.send("pos", json!({"id": id, "givenName": "Dee", "familyName": "Ode", "phone": "0612121212", "birthDate": "1966-06-06"})).await;
    }
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let store = &t.store;
    let record = |id: &'static str| async move { store.record_by_source_id("pos", id).await.unwrap().unwrap().id };

    // Bob merged into Ann by mistake, then both his records taken out again
    let (ann, bob) = (profile_of(&c, "webshop", "ann").await, profile_of(&c, "pos", "bob1").await);
    let (status, merged) = c.post(&format!("/v1/profiles/{ann}/merge"), WRITE_TOKEN, json!({"other": bob})).await;
    assert_eq!((status, merged["survivor"].as_str()), (200, Some(ann.as_str())));
    // the record that started Bob's profile is in Ann's because a person merged them
    let bob1 = &explained(&c, &ann).await["bob1"];
    assert_eq!((&bob1["decision"], &bob1["action"]), (&json!("manual"), &json!("merge by writer")), "{bob1}");
    assert!(bob1["atMs"].as_i64().is_some_and(|at| at > 0), "{bob1}");
    let bob_records = [record("bob1").await, record("bob2").await];
    let (status, split) = c.post(&format!("/v1/profiles/{ann}/unmerge"), WRITE_TOKEN, json!({"records": bob_records})).await;
    assert_eq!(status, 200, "{split}");
    let bob_now = split["created"][0].as_str().unwrap();
    let (status, profile) = c.get(&format!("/v1/profiles/{bob}"), READ_TOKEN).await;
    assert_eq!((status, profile["id"].as_str()), (200, Some(bob_now)), "{profile}");
    assert_eq!(profile["aliases"], json!([bob]));

    // Dee merged into Cyd, then one of her records taken out: her id names two profiles now
    let (cyd, dee) = (profile_of(&c, "webshop", "cyd").await, profile_of(&c, "pos", "dee1").await);
    assert_eq!(c.post(&format!("/v1/profiles/{cyd}/merge"), WRITE_TOKEN, json!({"other": dee})).await.0, 200);
    let dee1 = record("dee1").await;
    assert_eq!(c.post(&format!("/v1/profiles/{cyd}/unmerge"), WRITE_TOKEN, json!({"records": [dee1]})).await.0, 200);
    let mut holders = [profile_of(&c, "pos", "dee1").await, profile_of(&c, "pos", "dee2").await];
    holders.sort_by_key(|p| p[1..].parse::<i64>().unwrap());
    assert!(!holders.contains(&cyd), "{holders:?}");
    for path in [format!("/v1/profiles/{dee}"), format!("/v1/profiles/{dee}/timeline")] {
        let (status, body) = c.get(&path, READ_TOKEN).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("profile_split")), "{path}: {body}");
        let named: Vec<&str> = body["error"]["details"].as_array().unwrap().iter().map(|d| d["profileId"].as_str().unwrap()).collect();
        assert_eq!(named, holders.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let (status, body) = c.post(&format!("/v1/profiles/{dee}/merge"), WRITE_TOKEN, json!({"other": cyd})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("profile_split")), "{body}");
    // her records together again: the id leads there
    let (status, merged) = c.post(&format!("/v1/profiles/{}/merge", holders[0]), WRITE_TOKEN, json!({"other": holders[1]})).await;
    assert_eq!(status, 200, "{merged}");
    let (status, profile) = c.get(&format!("/v1/profiles/{dee}"), READ_TOKEN).await;
    assert_eq!((status, &profile["id"]), (200, &merged["survivor"]), "{profile}");
}

/// The review queue as a data steward filters it: by source, reason and probability band, each
/// page with the counts per status under the same filters; a filter value that can match
/// nothing by mistake is refused.
async fn the_review_queue_filters_and_counts_by_status(t: TestStore) {
    let c = Client::new(&t).await;
    c.send("webshop", json!({"id": "a", "givenName": "Ann", "familyName": "Lee", "email": "ann@example.com"})).await;
    c.send("pos", json!({"id": "b", "givenName": "Ann", "familyName": "Lee", "phone": "0611223344"})).await;
    c.send("pos", json!({"id": "c", "givenName": "Ann", "familyName": "Lee", "phone": "0699887766"})).await;
    worker(&t.store, resolver(), "w").drain().await.unwrap();
    let list = async |query: &str| {
        let (status, body) = c.get(&format!("/v1/review?{query}"), READ_TOKEN).await;
        assert_eq!(status, 200, "{query}: {body}");
        let ids: Vec<i64> = body["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
        (ids, body)
    };
    let (all, body) = list("").await;
    assert!(all.len() >= 2, "{body}");
    assert_eq!(body["counts"], json!({"open": all.len(), "approved": 0, "rejected": 0, "superseded": 0}));
    // both records of a pair come along, to compare side by side
    let item = &body["items"][0];
    let record = t.store.record(item["recordId"].as_i64().unwrap()).await.unwrap().unwrap();
    assert_eq!(item["record"]["source"], record.source.as_str());
    assert_eq!(item["otherRecord"]["attributes"]["givenName"], "Ann", "{item}");

    // by source: the pairs with a web-shop record, which are not all of them
    let with_webshop: Vec<i64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["record"]["source"] == "webshop" || i["otherRecord"]["source"] == "webshop")
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    let (ids, filtered) = list("source=webshop").await;
    assert_eq!(ids, with_webshop);
    assert_eq!(filtered["counts"]["open"], with_webshop.len());
    let (ids, none) = list("source=ticketing").await;
    assert!(ids.is_empty());
    assert_eq!(none["counts"], json!({"open": 0, "approved": 0, "rejected": 0, "superseded": 0}));
    // by reason
    assert_eq!(list("reason=uncertain").await.0, all);
    assert!(list("reason=forbidden").await.0.is_empty());
    // by probability band: the lower bound is inclusive, the upper one exclusive
    let p = item["probability"].as_f64().unwrap();
    let (ids, _) = list(&format!("minProbability={p}")).await;
    assert!(ids.contains(&item["id"].as_i64().unwrap()));
    let (ids, _) = list(&format!("maxProbability={p}")).await;
    assert!(!ids.contains(&item["id"].as_i64().unwrap()));
    let (ids, _) = list("minProbability=0&maxProbability=1").await;
    assert_eq!(ids, all);

    for bad in ["reason=nope", "source=nope", "filter=nope", "minProbability=1.5", "maxProbability=-0.1", "minProbability=0.6&maxProbability=0.5"] {
        let (status, body) = c.get(&format!("/v1/review?{bad}"), READ_TOKEN).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}: {body}");
    }

    // a decision moves an item from open to approved; the total stays
    let (status, _) = c.post(&format!("/v1/review/{}/approve", all[0]), WRITE_TOKEN, json!({})).await;
    assert_eq!(status, 200);
    let (open, body) = list("").await;
    let counts = &body["counts"];
    assert_eq!(counts["approved"], 1, "{counts}");
    assert_eq!(counts["open"], open.len(), "{counts}");
    let total: i64 = ["open", "approved", "rejected", "superseded"].iter().map(|s| counts[s].as_i64().unwrap()).sum();
    assert_eq!(total, all.len() as i64, "{counts}");
    assert_eq!(list("filter=approved").await.0, vec![all[0]]);
}

/// `GET /v1/session` tells the console what a token may do; the console's files are served
/// from the binary, under a policy that lets the page load and call nothing else.
async fn a_session_names_its_scopes_and_the_console_is_served(t: TestStore) {
    let c = Client::new(&t).await;
    let (status, session) = c.get("/v1/session", READ_TOKEN).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["token"], "reader");
    assert_eq!(session["scopes"], json!(["read"]));
    assert_eq!(session["sources"], json!(["pos", "ticketing", "webshop"]));
    assert_eq!(c.get("/v1/session", ERASE_TOKEN).await.1["scopes"], json!(["read", "erase"]));
    let (status, refused) = c.get("/v1/session", "nope").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("unauthorized")));

    let page = c.http.get(format!("{}/console/", c.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("connect-src 'self'"));
    assert!(page.text().await.unwrap().contains("Sign in"));
    let script = c.http.get(format!("{}/console/app.js", c.api)).send().await.unwrap();
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let missing = c.http.get(format!("{}/console/nope.js", c.api)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bare = no_redirects.get(format!("{}/console", c.api)).send().await.unwrap();
    assert_eq!((bare.status().as_u16(), bare.headers()["location"].to_str().unwrap()), (308, "/console/"));
    let doc: Value = c.http.get(format!("{}/openapi.json", c.api)).send().await.unwrap().json().await.unwrap();
    assert!(doc["paths"]["/v1/session"]["get"].is_object());
}

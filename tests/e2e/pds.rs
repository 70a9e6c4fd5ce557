//! Metadata dataset instances through `/api/pds/pds/{uid}.json|.xml`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_helpers::{TestServer, stores};

#[tokio::test]
async fn metadata_instances_round_trip_through_json_and_xml() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let q = s.member_query(3, "energy-co");
        let at = |fmt: &str, extra: &str| format!("/api/pds/pds/3.{fmt}?{q}{extra}");

        let first = json!({"ds_personal_details": {"field_personal_fname": "Ada", "field_personal_title": "Dr"}});
        let (status, created) = s.call(Method::POST, &at("json", ""), Some(&token), Some(first)).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        assert_eq!(created, json!({"success": 1, "dataset": "ds_personal_details", "instance": 0, "id": "1"}));
        // The older `field_ds_x` spelling and a second instance.
        let second = json!({"field_ds_personal_details": {"field_personal_fname": "Grace <Hopper> & co"}});
        let (_, created) = s.call(Method::POST, &at("json", ""), Some(&token), Some(second)).await;
        assert_eq!((created["instance"].as_i64(), created["id"].as_str()), (Some(1), Some("2")));

        // Update instance id 1 (instance_0), flat body with dataset=; an id the member lacks is 404.
        let put = |id: i64, name: &str| {
            let (path, body) =
                (at("json", &format!("&id={id}&dataset=ds_personal_details")), json!({"field_personal_fname": name}));
            let (s, token) = (&s, &token);
            async move { s.call(Method::PUT, &path, Some(token), Some(body)).await }
        };
        assert_eq!(put(1, "Ada L").await, (StatusCode::OK, json!({"success": 1})));
        assert_eq!(put(7, "x").await.0, StatusCode::NOT_FOUND);

        let (status, all) = s.call(Method::GET, &at("json", "&dataset=ds_personal_details"), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
        let ds = &all["ds_personal_details"];
        assert_eq!(ds["instance_0"]["field_personal_fname"]["value"], "Ada L");
        assert_eq!(
            ds["instance_0"]["field_personal_title"]["value"], "Dr",
            "fields not named by the update keep their values"
        );
        assert_eq!(ds["instance_1"]["field_personal_fname"]["value"], "Grace <Hopper> & co");
        assert_eq!(
            ds["instance_0"]["field_personal_fname"]["access"],
            json!({"r": {"a": 1, "s": "A"}, "w": {"a": 1, "s": "A"}})
        );
        let (_, one) =
            s.call(Method::GET, &at("json", "&dataset=ds_personal_details&instance=1"), Some(&token), None).await;
        assert_eq!(one["ds_personal_details"].as_object().unwrap().keys().collect::<Vec<_>>(), ["instance_1"]);

        // XML mirrors the JSON structure under <response>.
        let (status, xml) =
            s.call_text(Method::GET, &at("xml", "&dataset=ds_personal_details"), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(xml_to_json(&xml), all);
        assert!(xml.contains("<value>Grace &lt;Hopper&gt; &amp; co</value>"));

        // Several datasets joined with `+`.
        let (status, both) = s
            .call(Method::GET, &at("json", "&dataset=ds_personal_details+ds_personal_details"), Some(&token), None)
            .await;
        assert_eq!((status, both.as_object().unwrap().len()), (StatusCode::OK, 1));

        // Bad values are 422 naming fields, never echoing values; nothing is stored.
        let bad = json!({"ds_personal_details": {"field_personal_fname": {"nested": "canary-value-1"}, "no_such": "canary-value-2"}});
        let (status, text) = s.call_text(Method::POST, &at("json", ""), Some(&token), Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!text.contains("canary-value"), "{text}");
        assert!(text.contains("no_such") && text.contains("field_personal_fname"));
        let reserved = json!({"ds_personal_details": {"id": "3"}});
        assert_eq!(
            s.call(Method::POST, &at("json", ""), Some(&token), Some(reserved)).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let (_, after) = s.call(Method::GET, &at("json", "&dataset=ds_personal_details"), Some(&token), None).await;
        assert_eq!(after["ds_personal_details"].as_object().unwrap().len(), 2);
        // Transactional datasets are not metadata.
        let (status, _) = s.call(Method::GET, &at("json", "&dataset=ds_energy_consumption"), Some(&token), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Every access is in the member's log, with agreement version and purpose; refusals too.
        let (_, log) = s.call(Method::GET, "/v1/members/3/access-log", Some(s.member_secret(3)), None).await;
        let log = log.as_array().unwrap();
        assert!(
            log.iter().any(|e| e["action"] == "write" && e["decision"] == "allowed" && e["agreement_version"] == 1)
        );
        assert!(
            log.iter()
                .any(|e| e["action"] == "read" && e["rows"] == 2 && e["purpose"].as_str().unwrap().contains("energy"))
        );
        assert!(log.iter().any(|e| e["decision"] == "refused" || e["dataset"] == "ds_personal_details"));
        let text = serde_json::to_string(log).unwrap();
        assert!(!text.contains("Ada") && !text.contains("Grace"), "the access log holds no values");
    }
}

#[tokio::test]
async fn fields_and_environments_are_scoped() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let care = s.subscriber_token("care-services").await;
        let energy = s.subscriber_token("energy-co").await;
        // A sandbox connection that writes all of ds_personal_details but reads two fields.
        let mut terms = test_helpers::terms("Sandbox feed", &["ds_personal_details"]);
        terms["datasets"]["ds_personal_details"]["read"] = json!(["field_personal_fname", "field_personal_title"]);
        let (_, c) = s.call(Method::POST, "/v1/connections", Some(&care), Some(terms)).await;
        let id = c["id"].as_i64().unwrap();
        s.call(Method::POST, &format!("/v1/connections/{id}/submit"), Some(&care), None).await;
        let (_, approved) = s.call(Method::POST, &format!("/v1/connections/{id}/approve"), Some(s.admin()), None).await;
        assert_eq!(approved["connection"]["environment"], "sandbox");
        let (_, approval) = s
            .call(Method::POST, &format!("/v1/members/4/agreements/{id}/approve"), Some(s.member_secret(4)), None)
            .await;
        let sandbox_q =
            format!("con_id={}&key={}", approval["con_id"].as_str().unwrap(), approval["key"].as_str().unwrap());

        let write = |fname: &str| json!({"ds_personal_details": {"field_personal_fname": fname, "field_personal_mobile_phone": "07000 000000"}});
        let (status, _) =
            s.call(Method::POST, &format!("/api/pds/pds/4.json?{sandbox_q}"), Some(&care), Some(write("Sandy"))).await;
        assert_eq!(status, StatusCode::OK);
        let live_q = s.member_query(4, "energy-co");
        s.call(Method::POST, &format!("/api/pds/pds/4.json?{live_q}"), Some(&energy), Some(write("Prod"))).await;

        // The sandbox connection reads only sandbox data and only its two fields.
        let read = |q: &str, token: &str| {
            let (path, token) = (format!("/api/pds/pds/4.json?{q}&dataset=ds_personal_details"), token.to_owned());
            let s = &s;
            async move { s.call(Method::GET, &path, Some(&token), None).await.1 }
        };
        let sandbox = read(&sandbox_q, &care).await;
        let instances = sandbox["ds_personal_details"].as_object().unwrap();
        assert_eq!(instances.len(), 1);
        let mut fields: Vec<&String> = instances["instance_0"].as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["field_personal_fname", "field_personal_title"]);
        assert_eq!(instances["instance_0"]["field_personal_fname"]["value"], "Sandy");
        // The live connection sees only production data.
        let live = read(&live_q, &energy).await;
        let live = live["ds_personal_details"].as_object().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live["instance_0"]["field_personal_fname"]["value"], "Prod");
        assert!(!serde_json::to_string(live).unwrap().contains("Sandy"));

        // Writing a field the agreement does not grant for writing is 403 and stores nothing.
        let mut ro = test_helpers::terms("Read only", &["ds_personal_details"]);
        ro["datasets"]["ds_personal_details"]["write"] = json!(["field_personal_title"]);
        let (_, c) = s.call(Method::POST, "/v1/connections", Some(&care), Some(ro)).await;
        let id = c["id"].as_i64().unwrap();
        s.call(Method::POST, &format!("/v1/connections/{id}/submit"), Some(&care), None).await;
        s.call(Method::POST, &format!("/v1/connections/{id}/approve"), Some(s.admin()), None).await;
        let (_, approval) = s
            .call(Method::POST, &format!("/v1/members/4/agreements/{id}/approve"), Some(s.member_secret(4)), None)
            .await;
        let ro_q = format!("con_id={}&key={}", approval["con_id"].as_str().unwrap(), approval["key"].as_str().unwrap());
        let (status, _) =
            s.call(Method::POST, &format!("/api/pds/pds/4.json?{ro_q}"), Some(&care), Some(write("Nope"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, after) = s
            .call(
                Method::GET,
                &format!("/api/pds/pds/4.json?{sandbox_q}&dataset=ds_personal_details"),
                Some(&care),
                None,
            )
            .await;
        assert_eq!(after["ds_personal_details"].as_object().unwrap().len(), 1);
    }
}

/// Reads the Mydex XML answer back into the JSON shape it mirrors.
fn xml_to_json(xml: &str) -> Value {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<(String, serde_json::Map<String, Value>, String)> =
        vec![("root".into(), Default::default(), String::new())];
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                stack.push((String::from_utf8(e.name().as_ref().to_vec()).unwrap(), Default::default(), String::new()))
            }
            Event::Text(t) => stack.last_mut().unwrap().2.push_str(&t.xml_content().unwrap()),
            Event::GeneralRef(r) => {
                let text = match r.as_ref() {
                    b"lt" => "<",
                    b"gt" => ">",
                    b"amp" => "&",
                    b"quot" => "\"",
                    b"apos" => "'",
                    other => panic!("unexpected entity {other:?}"),
                };
                stack.last_mut().unwrap().2.push_str(text);
            }
            Event::End(_) => {
                let (name, children, text) = stack.pop().unwrap();
                let value = if children.is_empty() && !text.is_empty() {
                    Value::String(text)
                } else if children.is_empty() && ["value"].contains(&name.as_str()) {
                    Value::String(String::new())
                } else if children.is_empty() && ["a"].contains(&name.as_str()) {
                    Value::String(text)
                } else {
                    Value::Object(children)
                };
                stack.last_mut().unwrap().1.insert(name, value);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let root = stack.pop().unwrap().1;
    let mut response = root["response"].clone();
    // Numbers travel as text in XML; put the access flags back as numbers to compare.
    fix_numbers(&mut response);
    response
}

fn fix_numbers(v: &mut Value) {
    if let Value::Object(map) = v {
        for (k, child) in map.iter_mut() {
            if k == "a" {
                if let Value::String(s) = child {
                    *child = Value::from(s.parse::<i64>().unwrap());
                }
            } else {
                fix_numbers(child);
            }
        }
    }
}

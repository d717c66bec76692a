//! `GET /api/openapi.json`: the OpenAPI 3.1 document generated from the REST routes' code. Every
//! route the router serves is in it, everything in it is served, and real responses of a
//! running server validate against its schemas.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{TestServer, relaxed_config, start};
use serde_json::{Value, json};

/// The source of the REST routes: every path written in it must be documented.
const REST_SOURCE: &str = include_str!("../src/transport/rest.rs");

/// Every string literal of `source` that is a route path (`"/health"`, `"/api/…"`).
fn route_literals(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for opening in ["\"/api/", "\"/health\""] {
        for (at, _) in source.match_indices(opening) {
            let literal = &source[at + 1..];
            let end = literal.find('"').expect("a closed literal");
            found.insert(literal[..end].to_owned());
        }
    }
    found
}

/// The route paths written in `source` that `document` does not describe.
fn undocumented(source: &str, document: &Value) -> Vec<String> {
    let paths = document["paths"].as_object().expect("paths");
    route_literals(source)
        .into_iter()
        .filter(|path| !paths.contains_key(path))
        .collect()
}

#[test]
fn a_route_added_without_its_annotation_is_caught() {
    let document = serde_json::to_value(palaver::transport::rest::openapi()).unwrap();
    assert_eq!(undocumented(REST_SOURCE, &document), Vec::<String>::new());
    let with_plain_route = REST_SOURCE.replace(
        ".routes(routes!(health))",
        ".routes(routes!(health))\n        .route(\"/api/groups\", get(groups))",
    );
    assert_ne!(with_plain_route, REST_SOURCE);
    assert_eq!(undocumented(&with_plain_route, &document), ["/api/groups"]);
}

/// `(method, path template)` of every operation in the document.
fn operations(document: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                found.push((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let server = start(relaxed_config()).await;
    let (status, document) = server.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document,
        serde_json::to_value(palaver::transport::rest::openapi()).unwrap()
    );

    let written = route_literals(REST_SOURCE);
    assert!(written.len() >= 11, "{written:?}");
    let missing = undocumented(REST_SOURCE, &document);
    assert!(
        missing.is_empty(),
        "{missing:?} routed in src/transport/rest.rs but not in the OpenAPI document: give each \
         handler a #[utoipa::path] and add it with `.routes(routes!(…))`"
    );

    // Served: a route that is not served answers the fallback's "Not found" or 405.
    let client = reqwest::Client::new();
    for (method, path) in operations(&document) {
        let concrete = path
            .replace("{participant_id}", "someone")
            .replace("{chat_id}", "somechat");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = client
            .request(method.clone(), server.url(&concrete))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path} is documented but not served");
        assert!(
            !(status == 404 && body["message"] == "Not found"),
            "{method} {path} is documented but not served"
        );
    }
    server.stop().await;
}

/// The group and read-state routes: successes, a system message in history, and refusals.
async fn check_group_routes(
    check: &mut impl FnMut(&str, &str, (u16, Value)) -> Value,
    server: &TestServer,
    ada: &str,
    bob: &Value,
) {
    let bob_token = bob["token"].as_str().unwrap();
    let bob_id = bob["user"]["_id"].as_str().unwrap();
    let (_, cy) = server
        .post(
            "/api/auth/register",
            None,
            json!({ "name": "cy", "email": "cy@example.com", "password": "password123" }),
        )
        .await;
    let cy_id = cy["user"]["_id"].as_str().unwrap();
    let create = |body: Value| server.post("/api/chats", Some(ada), body);
    let group = check(
        "post",
        "/api/chats",
        create(json!({ "name": "team", "memberIds": [bob_id] })).await,
    );
    check("post", "/api/chats", create(json!({ "name": "" })).await);
    let id = group["_id"].as_str().unwrap();
    let one = "/api/chats/{chat_id}";
    let url = format!("/api/chats/{id}");
    check("get", one, server.get(&url, Some(ada)).await);
    check("get", one, server.get("/api/chats/nochat", Some(ada)).await);
    let renamed = json!({ "name": "the team" });
    check(
        "patch",
        one,
        server.patch(&url, Some(ada), renamed.clone()).await,
    );
    check(
        "patch",
        one,
        server.patch(&url, Some(bob_token), renamed).await,
    );
    let members = "/api/chats/{chat_id}/members";
    let members_url = format!("{url}/members");
    let add = json!({ "userIds": [cy_id] });
    check(
        "post",
        members,
        server.post(&members_url, Some(ada), add.clone()).await,
    );
    check(
        "post",
        members,
        server.post(&members_url, Some(bob_token), add).await,
    );
    check(
        "post",
        members,
        server
            .post(&members_url, Some(ada), json!({ "userIds": [] }))
            .await,
    );
    check("get", members, server.get(&members_url, Some(ada)).await);
    let read = "/api/chats/{chat_id}/read";
    let read_url = format!("{url}/read");
    check(
        "post",
        read,
        server
            .post(&read_url, Some(bob_token), json!({ "seq": 2 }))
            .await,
    );
    check(
        "post",
        read,
        server
            .post(&read_url, Some(bob_token), json!({ "seq": -1 }))
            .await,
    );
    let history = server
        .get(&format!("/api/messages/chat/{id}?after=0"), Some(ada))
        .await;
    check("get", "/api/messages/chat/{chat_id}", history);
    let member = "/api/chats/{chat_id}/members/{user_id}";
    check(
        "delete",
        member,
        server
            .delete(&format!("{members_url}/{cy_id}"), Some(bob_token))
            .await,
    );
    check(
        "delete",
        member,
        server
            .delete(&format!("{members_url}/{cy_id}"), Some(ada))
            .await,
    );
    check(
        "delete",
        member,
        server
            .delete(&format!("{members_url}/{cy_id}"), Some(ada))
            .await,
    );
}

/// Validates response bodies against the document's schemas, and remembers which operations
/// were checked.
struct Checker {
    document: Value,
    checked: HashMap<(String, String), BTreeSet<u16>>,
}

impl Checker {
    fn check(&mut self, method: &str, path: &str, status: u16, body: &Value) {
        let response = &self.document["paths"][path][method]["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(
                body.is_null(),
                "{method} {path} {status} documents no body: {body}"
            );
        } else {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.document["components"],
                "allOf": [schema],
            });
            let validator = jsonschema::draft202012::new(&root)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: bad schema {e}: {root}"));
            let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{method} {path} {status}: {errors:?}\nbody: {body}\nschema: {schema}"
            );
        }
        self.checked
            .entry((method.to_owned(), path.to_owned()))
            .or_default()
            .insert(status);
    }
}

#[tokio::test]
async fn real_responses_validate_against_the_documented_schemas() {
    let server = start(relaxed_config()).await;
    let (_, document) = server.get("/api/openapi.json", None).await;
    let mut checker = Checker {
        document: document.clone(),
        checked: HashMap::new(),
    };
    let mut check = |method: &str, path: &str, (status, body): (u16, Value)| {
        checker.check(method, path, status, &body);
        body
    };

    check("get", "/health", server.get("/health", None).await);
    check(
        "get",
        "/api/openapi.json",
        server.get("/api/openapi.json", None).await,
    );
    let register = |name: &str| json!({ "name": name, "email": format!("{name}@example.com"), "password": "password123" });
    let ada = check(
        "post",
        "/api/auth/register",
        server
            .post("/api/auth/register", None, register("ada"))
            .await,
    );
    let bob = check(
        "post",
        "/api/auth/register",
        server
            .post("/api/auth/register", None, register("bob"))
            .await,
    );
    check(
        "post",
        "/api/auth/register",
        server
            .post("/api/auth/register", None, register("ada"))
            .await,
    );
    check(
        "post",
        "/api/auth/register",
        server.post("/api/auth/register", None, json!({})).await,
    );
    let login = json!({ "email": "ada@example.com", "password": "password123" });
    check(
        "post",
        "/api/auth/login",
        server.post("/api/auth/login", None, login).await,
    );
    let wrong = json!({ "email": "ada@example.com", "password": "wrong-password" });
    check(
        "post",
        "/api/auth/login",
        server.post("/api/auth/login", None, wrong).await,
    );
    let token = ada["token"].as_str().unwrap();
    let bob_id = bob["user"]["_id"].as_str().unwrap();
    check(
        "get",
        "/api/auth/me",
        server.get("/api/auth/me", Some(token)).await,
    );
    check(
        "get",
        "/api/auth/me",
        server.get("/api/auth/me", None).await,
    );
    check(
        "post",
        "/api/auth/callback",
        server
            .post("/api/auth/callback", Some(token), json!({}))
            .await,
    );
    check(
        "get",
        "/api/users",
        server.get("/api/users?q=bob", Some(token)).await,
    );
    check(
        "get",
        "/api/users",
        server.get("/api/users?limit=x", Some(token)).await,
    );
    let with = "/api/chats/with/{participant_id}";
    let chat = check(
        "post",
        with,
        server
            .post(&format!("/api/chats/with/{bob_id}"), Some(token), json!({}))
            .await,
    );
    check(
        "post",
        with,
        server
            .post("/api/chats/with/nobody", Some(token), json!({}))
            .await,
    );
    let chat_id = chat["_id"].as_str().unwrap();
    let messages = "/api/messages/chat/{chat_id}";
    let url = format!("/api/messages/chat/{chat_id}");
    check(
        "post",
        messages,
        server
            .post(
                &url,
                Some(token),
                json!({ "text": "hi", "clientMsgId": "c1" }),
            )
            .await,
    );
    check(
        "post",
        messages,
        server
            .post(&url, Some(token), json!({ "text": "no id" }))
            .await,
    );
    check(
        "post",
        messages,
        server.post(&url, Some(token), json!({ "text": "" })).await,
    );
    check(
        "post",
        messages,
        server
            .post(
                "/api/messages/chat/nochat",
                Some(token),
                json!({ "text": "x" }),
            )
            .await,
    );
    check(
        "get",
        messages,
        server.get(&format!("{url}?after=0"), Some(token)).await,
    );
    check(
        "get",
        messages,
        server.get(&format!("{url}?limit=-1"), Some(token)).await,
    );
    check(
        "get",
        messages,
        server.get("/api/messages/chat/nochat", Some(token)).await,
    );
    check(
        "get",
        "/api/chats",
        server.get("/api/chats", Some(token)).await,
    );
    check_group_routes(&mut check, &server, token, &bob).await;
    check(
        "post",
        "/api/auth/logout",
        server
            .post("/api/auth/logout", Some(token), json!({}))
            .await,
    );
    check(
        "get",
        "/api/chats",
        server.get("/api/chats", Some(token)).await,
    );

    for operation in operations(&document) {
        assert!(
            checker.checked.contains_key(&operation),
            "{operation:?} has no response checked here: add a call of it to this test"
        );
    }
    server.stop().await;
}

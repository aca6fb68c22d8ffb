//! `GET /api/v1/openapi.json` on a real server: open, and every route it documents is one the server serves.

use drover_testkit::Server;

#[test]
fn every_documented_route_is_served() {
    let server = Server::start().unwrap();
    // Open: no token needed.
    let reply = server
        .request("GET", "/api/v1/openapi.json", None, None)
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let doc = reply.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "{}", paths.len());
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let reply = server.request(&method, &concrete, None, None).unwrap();
            // The fallback answers 404 naming no route; a route without that method answers 405.
            let fallback = reply.status == 404
                && reply.body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no such API route"));
            assert!(
                !fallback && reply.status != 405,
                "{method} {path} is documented but not served: {reply:?}"
            );
            if doc["paths"][path][method.to_lowercase()]["security"].is_array() {
                assert_eq!(reply.status, 401, "{method} {path} needs a token");
            }
        }
    }
    // An undocumented route is the fallback's 404.
    let reply = server.request("GET", "/api/v1/nope", None, None).unwrap();
    assert_eq!(reply.status, 404);
}

//! The OpenAPI 3 document of the JSON API, served at `/v1/openapi.json`. Hand-written next to the
//! routes it describes; the `http_api` integration test calls every operation it lists, so a
//! route that is documented but not served fails CI.

/// `openapi.json`, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_json() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }
}

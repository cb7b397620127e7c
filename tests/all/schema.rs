//! The published JSON Schema matches the parser's accepted keys.
use crate::harness::repo;
use serde_json::Value;
use sluice_engine::model::parse;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn json_schema_accepts_exactly_the_keys_the_parser_accepts() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schema/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let defs = &schema["$defs"];
    assert_eq!(keys(&schema), sorted(parse::PIPELINE_KEYS));
    assert_eq!(keys(&defs["stage"]), sorted(parse::STAGE_KEYS));
    assert_eq!(keys(&defs["action"]), sorted(parse::ACTION_KEYS));
    assert_eq!(
        keys(&defs["action"]["properties"]["limits"]),
        sorted(parse::LIMITS_KEYS)
    );
    assert_eq!(
        keys(&defs["action"]["properties"]["limits"]["properties"]["output"]),
        sorted(parse::OUTPUT_LIMITS_KEYS)
    );
    assert_eq!(
        keys(&defs["action"]["properties"]["capabilities"]),
        sorted(parse::CAPABILITY_KEYS)
    );
    assert_eq!(
        keys(&defs["action"]["properties"]["retry"]),
        sorted(parse::RETRY_KEYS)
    );
    assert_eq!(
        keys(&defs["action"]["properties"]["retry"]["properties"]["backoff"]),
        sorted(parse::BACKOFF_KEYS)
    );
    assert_eq!(keys(&defs["triggers"]), sorted(parse::TRIGGER_KEYS));
    assert_eq!(
        keys(&defs["triggers"]["properties"]["git"]["items"]),
        sorted(parse::GIT_FILTER_KEYS)
    );
    assert_eq!(
        keys(&defs["triggers"]["properties"]["schedule"]["items"]),
        sorted(parse::SCHEDULE_KEYS)
    );
    assert_eq!(
        keys(&defs["triggers"]["properties"]["webhook"]),
        sorted(parse::WEBHOOK_KEYS)
    );
    assert_eq!(
        keys(&defs["patterns"]["oneOf"][1]),
        sorted(parse::PATTERN_KEYS)
    );
    for obj in [&schema, &defs["stage"], &defs["action"], &defs["triggers"]] {
        assert_eq!(
            obj["additionalProperties"], false,
            "unknown keys are errors in the parser too"
        );
    }
    assert_eq!(schema["required"], serde_json::json!(["name", "stages"]));
    assert_eq!(
        defs["action"]["required"],
        serde_json::json!(["name", "uses"])
    );
}

//! greet 1.0.0.
const VERSION: &str = "1.0.0";
const HTTP: bool = false;
include!("../../greet/greet.rs");

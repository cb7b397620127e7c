//! greet 1.1.0: declares outgoing HTTP, which 1.0.0 did not.
const VERSION: &str = "1.1.0";
const HTTP: bool = true;
include!("../../greet/greet.rs");

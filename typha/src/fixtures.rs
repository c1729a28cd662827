//! Fixtures shared by typha's unit tests (compiled for tests only): model objects built
//! the same way everywhere, so a test says which object it wants, not how to build one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use typha_proto::{Key, Kind, Update, Value, pb};

/// An upsert of the Node `name` with nothing but its name set.
pub fn node(name: &str) -> Update {
    let key = Key::new(Kind::Node, "", name).unwrap();
    let value = Value::Node(pb::Node {
        name: name.to_string(),
        ..Default::default()
    });
    Update::new(key, Some(value)).unwrap()
}

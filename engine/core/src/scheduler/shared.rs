//! Copy-on-write parts of the execution record. The record is copied often — the local
//! engine's write-behind thread takes a copy of a running execution every few milliseconds,
//! while the executor waits for the lock — but each step changes one action. So actions are
//! shared between copies, and the first change to a shared one copies only that action.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A value shared between copies of a record until one of them changes it. Reads go through
/// `Deref`; a write (`DerefMut`) copies the value first if another record still shares it.
#[derive(Clone, PartialEq, Eq)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    /// Wrap a value.
    pub fn new(value: T) -> Self {
        Shared(Arc::new(value))
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[test]
    fn a_change_to_a_copy_leaves_the_original_alone() {
        let original = vec![
            Shared::new(String::from("a")),
            Shared::new(String::from("b")),
        ];
        let mut copy = original.clone();
        copy[1].push('!');
        assert_eq!((original[0].as_str(), original[1].as_str()), ("a", "b"));
        assert_eq!((copy[0].as_str(), copy[1].as_str()), ("a", "b!"));
        // The unchanged one is still one value, not two.
        assert!(std::ptr::eq(&*original[0], &*copy[0]));
        assert_eq!(serde_json::to_string(&copy).unwrap(), r#"["a","b!"]"#);
    }
}

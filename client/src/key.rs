//! Key arguments: every handle constructor accepts `"ns/key"` strings as well as [`Key`] values.
//!
//! Conversion is fallible (a string may not be a valid key), but handle constructors are not: the
//! handle keeps the conversion's result and the first operation on it reports a bad key as
//! [`Error::InvalidArgument`], before anything is sent. That keeps call sites to one `?`.

use crate::proto::{validate_namespace, Key};
use crate::Error;

/// Something that names a key: `"ns/key"` (`&str`, `String`, `&String`), a [`Key`], a `&Key`, or a
/// `(namespace, name)` pair.
///
/// ```no_run
/// use meridian_client::{IntoKey, Key};
/// let a = "users/alice/profile".into_key().unwrap(); // namespace "users", name "alice/profile"
/// let b = ("users", "alice/profile").into_key().unwrap();
/// assert_eq!(a, b);
/// assert!("no-slash".into_key().is_err());
/// ```
pub trait IntoKey {
    /// The validated key, or [`Error::InvalidArgument`] naming the problem.
    ///
    /// ```no_run
    /// use meridian_client::IntoKey;
    /// let key = String::from("app/visits").into_key().unwrap();
    /// assert_eq!(key.namespace, "app");
    /// ```
    fn into_key(self) -> Result<Key, Error>;
}

fn invalid(e: crate::proto::KeyError) -> Error {
    Error::InvalidArgument(e.0)
}

impl IntoKey for &str {
    fn into_key(self) -> Result<Key, Error> {
        self.parse::<Key>().map_err(invalid)
    }
}

impl IntoKey for String {
    fn into_key(self) -> Result<Key, Error> {
        self.as_str().into_key()
    }
}

impl IntoKey for &String {
    fn into_key(self) -> Result<Key, Error> {
        self.as_str().into_key()
    }
}

impl IntoKey for Key {
    fn into_key(self) -> Result<Key, Error> {
        // The fields are public, so a `Key` may have been built without `Key::new`.
        self.validate().map_err(invalid)?;
        Ok(self)
    }
}

impl IntoKey for &Key {
    fn into_key(self) -> Result<Key, Error> {
        self.clone().into_key()
    }
}

impl IntoKey for (&str, &str) {
    fn into_key(self) -> Result<Key, Error> {
        Key::new(self.0, self.1).map_err(invalid)
    }
}

/// Validates a namespace argument.
pub(crate) fn namespace(namespace: String) -> Result<String, Error> {
    validate_namespace(&namespace).map_err(invalid)?;
    Ok(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<Key, Error>) -> String {
        match result {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn parses_valid_keys() {
        let key = "users/alice/profile".into_key().unwrap();
        assert_eq!((key.namespace.as_str(), key.name.as_str()), ("users", "alice/profile"));
        assert_eq!(String::from("a/b").into_key().unwrap(), Key::new("a", "b").unwrap());
        assert_eq!((&String::from("a/b")).into_key().unwrap(), Key::new("a", "b").unwrap());
        let key = Key::new("a", "b").unwrap();
        assert_eq!((&key).into_key().unwrap(), key);
        assert_eq!(("a", "b/c").into_key().unwrap(), "a/b/c".into_key().unwrap());
    }

    #[test]
    fn rejects_invalid_keys_with_a_reason() {
        assert!(message("nokey".into_key()).contains("namespace/key"));
        assert!(message("/x".into_key()).contains("namespace is empty"));
        assert!(message("ns/".into_key()).contains("key name is empty"));
        assert!(message("ns/a\nb".into_key()).contains("control"));
        assert!(message(format!("ns/{}", "k".repeat(2000)).into_key()).contains("limit"));
        assert!(message(("a/b", "c").into_key()).contains("'/'"));
        // A hand-built Key is validated too.
        let bad = Key { namespace: String::new(), name: "x".into() };
        assert!(message(bad.into_key()).contains("namespace is empty"));
    }

    #[test]
    fn validates_namespaces() {
        assert_eq!(namespace("ns".into()).unwrap(), "ns");
        assert!(namespace("".into()).is_err());
        assert!(namespace("a/b".into()).is_err());
    }
}

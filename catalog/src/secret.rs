//! Secrets: generated with 192 bits of OS randomness, stored only as SHA-256, compared in
//! constant time. Keys are high-entropy, so a slow password hash would add cost, not safety.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A freshly issued secret's plaintext, shown once to its owner. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        Secret(hex::encode(bytes))
    }

    /// Wraps a secret chosen by the operator (`TROVE_ADMIN_TOKEN`).
    pub fn from_plaintext(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The hex SHA-256 of a secret: what the catalog stores and looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(pub(crate) String);

impl SecretHash {
    pub fn of(plaintext: &str) -> Self {
        SecretHash(hex::encode(Sha256::digest(plaintext.as_bytes())))
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored: &str) -> bool {
        self.0.as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashes_compare() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 48);
        assert!(a.hash().matches(&a.hash().0));
        assert!(!a.hash().matches(&b.hash().0));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}

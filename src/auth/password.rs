//! Password hashing with argon2id, off the async threads.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use rand::RngCore;

/// A PHC string for `password`.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let salt = SaltString::encode_b64(&raw).map_err(|e| anyhow::anyhow!("making a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Checks `password` against `phc`. An unparsable hash (an account that cannot sign
/// in) verifies against a dummy hash, so timing does not tell accounts apart.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let dummy = dummy_hash();
        let (phc, real) = match phc.as_deref().map(PasswordHash::new) {
            Some(Ok(h)) => (h, true),
            _ => (PasswordHash::new(dummy).expect("dummy hash parses"), false),
        };
        Argon2::default().verify_password(password.as_bytes(), &phc).is_ok() && real
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not-a-real-password").expect("hashing works"))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let h = super::hash("correct horse").unwrap();
        assert!(super::verify("correct horse".into(), Some(h.clone())).await);
        assert!(!super::verify("wrong".into(), Some(h)).await);
        assert!(!super::verify("not-a-real-password".into(), Some("!".into())).await);
        assert!(!super::verify("x".into(), None).await);
    }
}

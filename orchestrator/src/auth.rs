//! Bearer tokens: generation (random, URL-safe, usable as a WebSocket subprotocol value).

use base64::Engine as _;
use rand::RngCore;

/// A new random token: `al_` followed by 32 random bytes in unpadded base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "al_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_and_subprotocol_safe() {
        let a = super::new_token();
        let b = super::new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}

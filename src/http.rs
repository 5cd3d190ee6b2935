//! One place to build HTTP clients. reqwest is compiled against rustls without a bundled crypto
//! provider (ring keeps the build lean on small machines), so the provider is installed here,
//! once, before the first client exists.

use std::sync::Once;

/// A reqwest client builder with TLS ready to use.
pub fn client_builder() -> reqwest::ClientBuilder {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().user_agent(concat!("dispatch_runner/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_client() {
        assert!(super::client_builder().build().is_ok());
    }
}

//! The operator's connection to a pipeline's broker ([`Connection`], credentials already read
//! from Secrets), and the client context ([`ConnectionContext`]) that keeps the last failure
//! librdkafka reported so an admin error can say why (authentication refused, broker down).

use crate::error::*;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use sensorflow_api::{SaslMechanism, SecurityProtocol};

/// Connection settings of the operator's clients (credentials already read from Secrets).
/// `Debug` shows which credentials are set, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// `security.protocol`, when set.
    pub protocol: Option<SecurityProtocol>,
    /// `sasl.mechanism`, when set.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username and password.
    pub sasl_credentials: Option<(String, String)>,
    /// PEM CA bundle (`ssl.ca.pem`).
    pub ca_pem: Option<String>,
    /// PEM client certificate and its unencrypted PEM key, for mutual TLS
    /// (`ssl.certificate.pem`, `ssl.key.pem`).
    pub client_certificate: Option<(String, String)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field(
                "sasl_username",
                &self.sasl_credentials.as_ref().map(|(u, _)| u),
            )
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_certificate.is_some())
            .finish()
    }
}

impl Connection {
    /// The client configuration (`client.id` `sensorflow-operator`, 10 s socket timeout).
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("socket.timeout.ms", "10000")
            .set("client.id", "sensorflow-operator");
        let (user, pass) = match &self.sasl_credentials {
            Some((u, p)) => (Some(u.as_str()), Some(p.as_str())),
            None => (None, None),
        };
        crate::config::set_security(&mut c, self.protocol, self.sasl_mechanism, user, pass);
        if let Some(ca) = &self.ca_pem {
            c.set("ssl.ca.pem", ca);
        }
        if let Some((cert, key)) = &self.client_certificate {
            c.set("ssl.certificate.pem", cert).set("ssl.key.pem", key);
        }
        c
    }

    pub(crate) fn admin(&self) -> Result<AdminClient<DefaultClientContext>, AdminError> {
        self.config()
            .create()
            .map_err(kafka(format!("kafka client config for {}", self.bootstrap)))
    }
}

/// Client context of the metadata client [`Connection`] reads topics with: remembers the last
/// connection failure librdkafka reported (the broker refusing SASL authentication, a failed
/// TLS handshake, a refused connection). A metadata request to a broker the client cannot use
/// only fails with "broker transport failure"; this says why. librdkafka queues these reports
/// (`log.queue`) until the client is polled, which [`metadata`] does after each failed slice.
/// Log lines go on to `tracing` (target `librdkafka`).
#[derive(Debug, Default)]
pub struct ConnectionContext {
    last_failure: std::sync::Mutex<Option<String>>,
}

impl ConnectionContext {
    /// The last connection failure logged, without librdkafka's varying
    /// "(after N ms in state X…)" suffix, so a repeated failure reads the same each time.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|f| f.clone())
    }

    /// Whether the last connection failure is the broker refusing SASL authentication.
    pub fn authentication_failed(&self) -> bool {
        self.last_failure()
            .is_some_and(|f| is_authentication_failure(&f))
    }

    fn record(&self, message: &str) {
        // "[thrd:sasl_ssl://b:1/bootstrap]: sasl_ssl://b:1/bootstrap: … (after 5ms in state X)"
        let message = match message.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(message, |(_, m)| m),
            None => message,
        };
        let stable = message
            .split_once(" (after ")
            .map_or(message, |(m, _)| m)
            .trim();
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(stable.to_owned());
        }
    }

    /// The error for a failed request: [`AdminError::Authentication`] when the broker refused
    /// the credentials, otherwise the request's error with the last connection failure (if
    /// any) added to `what`.
    pub(crate) fn failed(&self, what: String, source: KafkaError) -> AdminError {
        match self.last_failure() {
            Some(detail) if is_authentication_failure(&detail) => {
                AdminError::Authentication { what, detail }
            }
            Some(detail) => AdminError::Kafka {
                what: format!("{what} (last connection failure: {detail})"),
                source,
            },
            None => AdminError::Kafka { what, source },
        }
    }
}

/// Whether a librdkafka connection failure is a SASL authentication refusal (librdkafka:
/// "SASL authentication error: …"; the broker: "Authentication failed …").
fn is_authentication_failure(message: &str) -> bool {
    message.contains("SASL authentication error") || message.contains("Authentication failed")
}

impl rdkafka::producer::ProducerContext for ConnectionContext {
    type DeliveryOpaque = ();
    /// The metadata client produces nothing.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for ConnectionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}");
                self.record(message);
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}");
                if fac == "FAIL" {
                    self.record(message);
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::trace!(target: "librdkafka", facility = fac, "{message}");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
        self.record(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_authentication_is_recognised_and_reads_the_same_each_time() {
        let ctx = ConnectionContext::default();
        assert!(ctx.last_failure().is_none());
        let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
        assert!(matches!(e, AdminError::Kafka { ref what, .. } if what == "metadata from b:1"));

        ctx.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "sasl_ssl://b:1/bootstrap: SSL handshake failed: certificate verify failed (after 12ms in state SSL_HANDSHAKE)",
        );
        assert!(!ctx.authentication_failed());
        let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
        assert!(!e.is_authentication());
        assert!(
            e.to_string().contains("(last connection failure: sasl_ssl://b:1/bootstrap: SSL handshake failed: certificate verify failed)"),
            "{e}"
        );

        for after in [
            "3ms in state AUTH_REQ",
            "7ms in state AUTH_REQ, 2 identical error(s) suppressed",
        ] {
            ctx.log(
                RDKafkaLogLevel::Error,
                "FAIL",
                &format!("[thrd:sasl_ssl://b:1/bootstrap]: sasl_ssl://b:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after {after})"),
            );
            assert!(ctx.authentication_failed());
            let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
            assert!(e.is_authentication());
            assert_eq!(
                e.to_string(),
                "metadata from b:1: SASL authentication failed: sasl_ssl://b:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
            );
        }
        // Informational lines are not failures.
        let quiet = ConnectionContext::default();
        quiet.log(RDKafkaLogLevel::Info, "CONNECT", "connecting");
        quiet.log(
            RDKafkaLogLevel::Warning,
            "CONFWARN",
            "a configuration warning",
        );
        assert!(quiet.last_failure().is_none());
    }
}

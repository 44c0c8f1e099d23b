//! `[gateway]`: listener addresses, TLS files, data directory, admin access.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Checked, Checker};
use crate::raw::RawGateway;
use crate::GatewayConfig;

impl Checker<'_> {
    pub(super) fn gateway(&self, raw: RawGateway, base_dir: &Path) -> Checked<GatewayConfig> {
        let listen = self.addr("gateway.listen", raw.listen, GatewayConfig::DEFAULT_LISTEN)?;
        let admin_listen = self.addr(
            "gateway.admin_listen",
            raw.admin_listen,
            GatewayConfig::DEFAULT_ADMIN_LISTEN,
        )?;
        let tls_listen = match raw.tls_listen {
            Some(text) => Some(self.addr("gateway.tls_listen", Some(text), listen)?),
            None => None,
        };
        // Port 0 asks the OS for a free port, so equal addresses only clash with a fixed port.
        let listeners = [
            ("gateway.listen", Some(listen)),
            ("gateway.tls_listen", tls_listen),
            ("gateway.admin_listen", Some(admin_listen)),
        ];
        for (i, (field, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(addr)) {
                return Err(self.invalid(
                    *field,
                    format!("{addr} is also {other}; each listener needs its own address"),
                ));
            }
        }

        let (tls_cert, tls_key) = match (raw.tls_cert, raw.tls_key) {
            (None, None) => (None, None),
            (Some(cert), Some(key)) => (
                Some(self.file_path("gateway.tls_cert", &cert, base_dir)?),
                Some(self.file_path("gateway.tls_key", &key, base_dir)?),
            ),
            (Some(_), None) => {
                return Err(self.invalid(
                    "gateway.tls_key",
                    "is missing: tls_cert and tls_key go together (set both, or neither for a \
                     generated self-signed certificate)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "gateway.tls_cert",
                    "is missing: tls_cert and tls_key go together (set both, or neither for a \
                     generated self-signed certificate)",
                ))
            }
        };

        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| GatewayConfig::DEFAULT_DATA_DIR.to_owned());
        if data_dir.is_empty() {
            return Err(self.invalid("gateway.data_dir", "must not be empty"));
        }

        if raw.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(self.invalid(
                "gateway.admin_token",
                "must not be empty (remove it to run the admin API without a token on loopback)",
            ));
        }
        if !admin_listen.ip().is_loopback() && raw.admin_token.is_none() {
            return Err(self.invalid(
                "gateway.admin_listen",
                format!(
                    "{admin_listen} is not a loopback address, so other machines could reach the \
                     admin API; set gateway.admin_token, or listen on 127.0.0.1 or [::1]"
                ),
            ));
        }

        let max_total_instances = match raw.max_total_instances {
            Some(v) => self.count_u32("gateway.max_total_instances", v, None)?,
            None => GatewayConfig::DEFAULT_MAX_TOTAL_INSTANCES,
        };
        let max_new_instances_per_minute = match raw.max_new_instances_per_minute {
            Some(v) => Some(self.count_u32("gateway.max_new_instances_per_minute", v, None)?),
            None => None,
        };

        Ok(GatewayConfig {
            listen,
            tls_listen,
            tls_cert,
            tls_key,
            admin_listen,
            data_dir: PathBuf::from(data_dir),
            admin_token: raw.admin_token,
            max_total_instances,
            max_new_instances_per_minute,
            isolation: raw.isolation.unwrap_or_default(),
            pass_env: self.pass_env(raw.pass_env.unwrap_or_default())?,
            max_records: match raw.max_records {
                Some(v) => self.count_u32("gateway.max_records", v, None)?,
                None => GatewayConfig::default().max_records,
            },
            max_logged_invocations: match raw.max_logged_invocations {
                Some(v) => self.count_u32("gateway.max_logged_invocations", v, None)?,
                None => GatewayConfig::default().max_logged_invocations,
            },
            max_record_age: match raw.max_record_age {
                Some(ref age) => Some(self.duration(
                    "gateway.max_record_age",
                    Some(age),
                    Duration::ZERO,
                    None,
                )?),
                None => None,
            },
            fault_headers: raw.fault_headers,
        })
    }

    fn pass_env(&self, names: Vec<String>) -> Checked<Vec<String>> {
        for name in &names {
            if !crate::names::is_env_key(name) {
                return Err(self.invalid(
                    "gateway.pass_env",
                    format!("{name:?} is not an environment variable name ([A-Za-z][A-Za-z0-9_]*)"),
                ));
            }
        }
        Ok(names)
    }

    fn addr(&self, field: &str, raw: Option<String>, default: SocketAddr) -> Checked<SocketAddr> {
        let Some(text) = raw else {
            return Ok(default);
        };
        text.parse().map_err(|_| {
            self.invalid(
                field,
                format!(
                    "{text:?} is not an IP:PORT address; write e.g. \"127.0.0.1:8080\", \
                     \"0.0.0.0:8080\" or \"[::1]:8080\" (host names are not resolved; port 0 \
                     picks a free port)"
                ),
            )
        })
    }
}

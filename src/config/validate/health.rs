//! `[service.health]`: the check kind and the keys of each kind, the probe port, period and
//! timeout, and the thresholds.
//!
//! A key that belongs to another kind than `check` is one problem naming both, never silently
//! ignored: a forgotten `check = "http"` must not leave a `path` doing nothing.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Validator;
use super::hex;
use super::names::check_host_port;
use crate::config::raw::{RawCheck, RawHealth, RawMethod};
use crate::config::{
    ExecCheck, Health, HealthCheck, HttpCheck, HttpMethod, ProblemScope, TcpCheck, UdpCheck,
};

/// The keys only some check kinds take: the key, whether it is set, and the kinds that take it.
fn kind_keys(raw: &RawHealth) -> [(&'static str, bool, &'static [RawCheck]); 9] {
    use RawCheck::{Exec, Http, Tcp, Udp};
    [
        ("command", raw.command.is_some(), &[Exec]),
        ("path", raw.path.is_some(), &[Http]),
        ("method", raw.method.is_some(), &[Http]),
        ("host", raw.host.is_some(), &[Http]),
        ("expect_status", raw.expect_status.is_some(), &[Http]),
        ("send", raw.send.is_some(), &[Tcp, Udp]),
        ("send_hex", raw.send_hex.is_some(), &[Tcp, Udp]),
        ("expect", raw.expect.is_some(), &[Tcp, Http, Udp]),
        ("expect_hex", raw.expect_hex.is_some(), &[Tcp, Udp]),
    ]
}

impl Validator {
    pub(super) fn health(&mut self, scope: &ProblemScope, raw: Option<&RawHealth>) -> Health {
        let base = Health::default();
        let Some(raw) = raw else { return base };

        let kind = raw.check.unwrap_or(RawCheck::Tcp);
        // A key of another kind is reported once and otherwise ignored, so a wrong kind does
        // not also bring that key's own complaints.
        for (key, set, kinds) in kind_keys(raw) {
            if set && !kinds.contains(&kind) {
                let allowed: Vec<String> =
                    kinds.iter().map(|k| format!("\"{}\"", k.name())).collect();
                self.push(
                    scope,
                    format!("health.{key}"),
                    format!(
                        "only allowed with check = {} (check is \"{}\")",
                        allowed.join(" or "),
                        kind.name()
                    ),
                );
            }
        }
        let check = match kind {
            RawCheck::Tcp => HealthCheck::Tcp(self.tcp_check(scope, raw)),
            RawCheck::Udp => HealthCheck::Udp(self.udp_check(scope, raw)),
            RawCheck::Http => HealthCheck::Http(self.http_check(scope, raw)),
            RawCheck::Exec => match self.exec_check(scope, raw) {
                Some(exec) => HealthCheck::Exec(exec),
                // Reported, so the file is rejected: the kind only stands in while the other
                // keys are checked.
                None => HealthCheck::None,
            },
            RawCheck::None => HealthCheck::None,
        };

        if raw.port == Some(0) {
            self.push(scope, "health.port", "0 is out of range 1-65535");
        } else if raw.port.is_some() && kind == RawCheck::Exec {
            self.push(
                scope,
                "health.port",
                "has no effect with check = \"exec\" (the command is given the endpoint's \
                 address; pass a port in health.command)",
            );
        }
        let period_zero = raw.period.is_some_and(|d| d.is_zero());
        let timeout_zero = raw.timeout.is_some_and(|d| d.is_zero());
        let period = self.positive(scope, "health.period", raw.period, base.period);
        let timeout = self.positive(scope, "health.timeout", raw.timeout, base.timeout);
        if !period_zero && !timeout_zero && timeout >= period {
            self.push(
                scope,
                "health.timeout",
                format!(
                    "{} must be shorter than health.period ({})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(period)
                ),
            );
        }
        let jitter = match raw.jitter {
            None => base.jitter,
            Some(j) if (0.0..=Health::MAX_JITTER).contains(&j) => j,
            Some(j) => {
                self.push(
                    scope,
                    "health.jitter",
                    format!("{j} is out of range 0.0-{}", Health::MAX_JITTER),
                );
                base.jitter
            }
        };
        let failure_threshold = self.at_least_one(
            scope,
            "health.failure_threshold",
            raw.failure_threshold,
            base.failure_threshold,
        );
        let success_threshold = self.at_least_one(
            scope,
            "health.success_threshold",
            raw.success_threshold,
            base.success_threshold,
        );

        Health {
            check,
            port: raw.port.filter(|&p| p != 0),
            period,
            jitter,
            timeout,
            failure_threshold,
            success_threshold,
        }
    }

    /// `send`/`send_hex` and `expect`/`expect_hex`.
    fn tcp_check(&mut self, scope: &ProblemScope, raw: &RawHealth) -> TcpCheck {
        let send = self.bytes(
            scope,
            ("send", &raw.send),
            ("send_hex", &raw.send_hex),
            None,
        );
        let expect = self.bytes(
            scope,
            ("expect", &raw.expect),
            ("expect_hex", &raw.expect_hex),
            Some(TcpCheck::READ_LIMIT),
        );
        TcpCheck { send, expect }
    }

    /// `send`/`send_hex` (the datagram) and `expect`/`expect_hex` (in one reply).
    fn udp_check(&mut self, scope: &ProblemScope, raw: &RawHealth) -> UdpCheck {
        let send = self.bytes(
            scope,
            ("send", &raw.send),
            ("send_hex", &raw.send_hex),
            Some(UdpCheck::READ_LIMIT),
        );
        let expect = self.bytes(
            scope,
            ("expect", &raw.expect),
            ("expect_hex", &raw.expect_hex),
            Some(UdpCheck::READ_LIMIT),
        );
        UdpCheck {
            send: send.unwrap_or_default(),
            expect,
        }
    }

    /// `method`, `path`, `host`, `expect_status` and `expect` (the body).
    fn http_check(&mut self, scope: &ProblemScope, raw: &RawHealth) -> HttpCheck {
        let method = match raw.method {
            None | Some(RawMethod::Get) => HttpMethod::Get,
            Some(RawMethod::Head) => HttpMethod::Head,
            Some(RawMethod::Options) => HttpMethod::Options,
        };
        let path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') {
            self.push(
                scope,
                "health.path",
                format!("\"{path}\" must start with '/'"),
            );
        } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // The path goes verbatim into the request line.
            self.push(
                scope,
                "health.path",
                format!("{path:?} must not contain spaces or control characters"),
            );
        }
        if let Some(Err(e)) = raw.host.as_deref().map(check_host_port) {
            self.push(scope, "health.host", e);
        }
        let expect_status = raw
            .expect_status
            .as_deref()
            .map(|statuses| self.statuses(scope, statuses));
        let expect = match (&raw.expect, method) {
            (Some(_), HttpMethod::Head) => {
                self.push(
                    scope,
                    "health.expect",
                    "not allowed with method = \"HEAD\" (a HEAD answer has no body)",
                );
                None
            }
            (expect, _) => self
                .bytes(
                    scope,
                    ("expect", expect),
                    ("expect_hex", &None),
                    Some(HttpCheck::BODY_LIMIT),
                )
                // Came from a string, so still valid UTF-8.
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        };
        HttpCheck {
            method,
            path,
            host: raw.host.clone(),
            expect_status,
            expect,
        }
    }

    /// `command`: required; `command[0]` an absolute path to an executable regular file,
    /// checked now so `vipd check` reports a missing or unusable program.
    fn exec_check(&mut self, scope: &ProblemScope, raw: &RawHealth) -> Option<ExecCheck> {
        let Some(command) = &raw.command else {
            self.push(scope, "health.command", "required with check = \"exec\"");
            return None;
        };
        let Some((program, args)) = command.split_first() else {
            self.push(scope, "health.command", "must not be empty");
            return None;
        };
        let mut ok = true;
        for (i, arg) in command.iter().enumerate() {
            if arg.contains('\0') {
                // An argv entry is a C string: it cannot carry a NUL.
                self.push(
                    scope,
                    format!("health.command[{i}]"),
                    "must not contain a NUL character",
                );
                ok = false;
            }
        }
        let program = PathBuf::from(program);
        if ok && let Err(e) = check_executable(&program) {
            self.push(scope, "health.command[0]", e);
            ok = false;
        }
        ok.then(|| ExecCheck {
            program,
            args: args.to_vec(),
        })
    }

    /// `expect_status`: a non-empty list of unique statuses 100-599.
    fn statuses(&mut self, scope: &ProblemScope, statuses: &[u16]) -> Vec<u16> {
        if statuses.is_empty() {
            self.push(
                scope,
                "health.expect_status",
                "must list at least one status",
            );
        }
        let mut seen = HashSet::new();
        for (i, &status) in statuses.iter().enumerate() {
            let key = format!("health.expect_status[{i}]");
            if !(100..=599).contains(&status) {
                self.push(scope, key, format!("{status} is out of range 100-599"));
            } else if !seen.insert(status) {
                self.push(scope, key, format!("{status} is listed twice"));
            }
        }
        statuses.to_vec()
    }

    /// The bytes of a text key or of its `_hex` twin: at most one of them set, not empty, and
    /// no longer than `limit` (an `expect` longer than what a probe reads could never match).
    fn bytes(
        &mut self,
        scope: &ProblemScope,
        (text_key, text): (&str, &Option<String>),
        (hex_key, hex_text): (&str, &Option<String>),
        limit: Option<usize>,
    ) -> Option<Vec<u8>> {
        let (key, bytes) = match (text, hex_text) {
            (None, None) => return None,
            (Some(_), Some(_)) => {
                self.push(
                    scope,
                    format!("health.{hex_key}"),
                    format!("only one of health.{text_key} and health.{hex_key} may be set"),
                );
                return None;
            }
            (Some(text), None) => (text_key, text.as_bytes().to_vec()),
            (None, Some(hex_text)) => match hex::decode(hex_text) {
                Ok(bytes) => (hex_key, bytes),
                Err(e) => {
                    self.push(
                        scope,
                        format!("health.{hex_key}"),
                        format!("{hex_text:?}: {e}"),
                    );
                    return None;
                }
            },
        };
        if bytes.is_empty() {
            self.push(scope, format!("health.{key}"), "must not be empty");
            return None;
        }
        if let Some(limit) = limit.filter(|&limit| bytes.len() > limit) {
            self.push(
                scope,
                format!("health.{key}"),
                format!(
                    "{} bytes is longer than the {limit} bytes a probe reads",
                    bytes.len()
                ),
            );
            return None;
        }
        Some(bytes)
    }
}

/// Whether `program` is an absolute path to a regular file with an execute bit.
fn check_executable(program: &Path) -> Result<(), String> {
    if !program.is_absolute() {
        return Err(format!(
            "\"{}\" must be an absolute path",
            program.display()
        ));
    }
    let metadata = match std::fs::metadata(program) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{} does not exist", program.display()));
        }
        Err(e) => return Err(format!("{}: {e}", program.display())),
    };
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", program.display()));
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", program.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, ms, service};
    use super::*;

    /// The health settings of a valid service with `keys` in `[service.health]`.
    fn settings(keys: &str) -> Health {
        let text = service(&format!("[service.health]\n{keys}\n"));
        load(&text).unwrap().services.remove(0).health
    }

    fn check(keys: &str) -> HealthCheck {
        settings(keys).check
    }

    #[test]
    fn health_variants() {
        assert_eq!(check("check = \"http\""), HealthCheck::http("/"));
        assert_eq!(check("check = \"none\""), HealthCheck::None);
        assert_eq!(check("period = \"5s\""), HealthCheck::tcp());
        // Only a default timeout that is not shorter than the period is an error.
        let h = settings("period = \"600ms\"");
        assert_eq!((h.period, h.timeout), (ms(600), ms(500)));
    }

    #[test]
    fn jitter_converts() {
        let jitter = |keys: &str| settings(keys).jitter;
        assert_eq!(jitter(""), Health::DEFAULT_JITTER);
        assert_eq!(jitter("jitter = 0.25"), 0.25);
        assert_eq!(jitter("jitter = 0.5"), 0.5);
        // TOML integers are accepted where a float is expected.
        assert_eq!(jitter("jitter = 0"), 0.0);
    }

    #[test]
    fn http_keys_convert() {
        let check = |keys: &str| check(&format!("check = \"http\"\n{keys}"));
        assert_eq!(check(""), HealthCheck::http("/"));
        assert_eq!(
            check(
                "method = \"OPTIONS\"\npath = \"/primary\"\nhost = \"[::1]:8008\"\n\
                 expect_status = [200, 204]\nexpect = \"running\""
            ),
            HealthCheck::Http(HttpCheck {
                method: HttpMethod::Options,
                path: "/primary".into(),
                host: Some("[::1]:8008".into()),
                expect_status: Some(vec![200, 204]),
                expect: Some("running".into()),
            })
        );
        assert_eq!(
            check("method = \"HEAD\""),
            HealthCheck::Http(HttpCheck {
                method: HttpMethod::Head,
                ..HttpCheck::get("/")
            })
        );
    }

    #[test]
    fn exec_command_converts() {
        assert_eq!(
            check("check = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 0\"]"),
            HealthCheck::Exec(ExecCheck {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 0".into()],
            })
        );
    }

    #[test]
    fn tcp_send_and_expect_convert() {
        let tcp = |send: Option<&[u8]>, expect: Option<&[u8]>| {
            HealthCheck::Tcp(TcpCheck {
                send: send.map(<[u8]>::to_vec),
                expect: expect.map(<[u8]>::to_vec),
            })
        };
        // TOML escapes reach the wire as the bytes they stand for.
        assert_eq!(
            check("send = \"INFO replication\\r\\n\"\nexpect = \"role:master\""),
            tcp(Some(b"INFO replication\r\n"), Some(b"role:master"))
        );
        assert_eq!(
            check("check = \"tcp\"\nsend_hex = \"00 FF 0d0a\"\nexpect_hex = \"2b\""),
            tcp(Some(&[0x00, 0xff, 0x0d, 0x0a]), Some(b"+"))
        );
        assert_eq!(check("send = \"QUIT\\r\\n\""), tcp(Some(b"QUIT\r\n"), None));
        // Exactly the read limit still fits.
        let longest = format!("expect = \"{}\"", "x".repeat(TcpCheck::READ_LIMIT));
        assert_eq!(
            check(&longest),
            tcp(None, Some(&vec![b'x'; TcpCheck::READ_LIMIT]))
        );
    }

    #[test]
    fn each_rule_reports_its_key() {
        let health = |keys: &str| service(&format!("[service.health]\n{keys}\n"));
        // A file that exists but has no execute bit.
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = plain.path().display();
        let not_executable = format!("check = \"exec\"\ncommand = [\"{plain}\"]");
        let not_executable_message =
            format!("vipd.toml: service \"web\": health.command[0]: {plain} is not executable");
        let too_long = format!("expect = \"{}\"", "x".repeat(TcpCheck::READ_LIMIT + 1));
        let too_long_body = format!(
            "check = \"http\"\nexpect = \"{}\"",
            "x".repeat(HttpCheck::BODY_LIMIT + 1)
        );
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
            (
                health("check = \"http\"\nsend = \"PING\""),
                "vipd.toml: service \"web\": health.send: only allowed with check = \"tcp\" or \"udp\" (check is \"http\")",
            ),
            (
                health("check = \"none\"\nexpect_hex = \"00\""),
                "vipd.toml: service \"web\": health.expect_hex: only allowed with check = \"tcp\" or \"udp\" (check is \"none\")",
            ),
            (
                health("send = \"PING\"\nsend_hex = \"00\""),
                "vipd.toml: service \"web\": health.send_hex: only one of health.send and health.send_hex may be set",
            ),
            (
                health("expect = \"+PONG\"\nexpect_hex = \"2b\""),
                "vipd.toml: service \"web\": health.expect_hex: only one of health.expect and health.expect_hex may be set",
            ),
            (
                health("send = \"\""),
                "vipd.toml: service \"web\": health.send: must not be empty",
            ),
            (
                health("expect = \"\""),
                "vipd.toml: service \"web\": health.expect: must not be empty",
            ),
            (
                health("send_hex = \" \""),
                "vipd.toml: service \"web\": health.send_hex: must not be empty",
            ),
            (
                health("send_hex = \"0a 0g\""),
                "vipd.toml: service \"web\": health.send_hex: \"0a 0g\": 'g' at position 5 is not a hex digit",
            ),
            (
                health("expect_hex = \"2b5\""),
                "vipd.toml: service \"web\": health.expect_hex: \"2b5\": ends in half a byte (an odd number of hex digits)",
            ),
            (
                health("expect_hex = \"2 b\""),
                "vipd.toml: service \"web\": health.expect_hex: \"2 b\": whitespace at position 2 splits a byte",
            ),
            (
                health(&too_long),
                "vipd.toml: service \"web\": health.expect: 16385 bytes is longer than the 16384 bytes a probe reads",
            ),
            (
                health(&too_long_body),
                "vipd.toml: service \"web\": health.expect: 65537 bytes is longer than the 65536 bytes a probe reads",
            ),
            (
                health("method = \"HEAD\""),
                "vipd.toml: service \"web\": health.method: only allowed with check = \"http\" (check is \"tcp\")",
            ),
            (
                health("host = \"db\""),
                "vipd.toml: service \"web\": health.host: only allowed with check = \"http\" (check is \"tcp\")",
            ),
            (
                health("check = \"none\"\nexpect_status = [200]"),
                "vipd.toml: service \"web\": health.expect_status: only allowed with check = \"http\" (check is \"none\")",
            ),
            (
                health("check = \"none\"\nexpect = \"x\""),
                "vipd.toml: service \"web\": health.expect: only allowed with check = \"tcp\" or \"http\" or \"udp\" (check is \"none\")",
            ),
            (
                health("check = \"http\"\nsend_hex = \"00\""),
                "vipd.toml: service \"web\": health.send_hex: only allowed with check = \"tcp\" or \"udp\" (check is \"http\")",
            ),
            (
                health("check = \"http\"\nexpect_hex = \"00\""),
                "vipd.toml: service \"web\": health.expect_hex: only allowed with check = \"tcp\" or \"udp\" (check is \"http\")",
            ),
            (
                health("check = \"http\"\nmethod = \"HEAD\"\nexpect = \"ok\""),
                "vipd.toml: service \"web\": health.expect: not allowed with method = \"HEAD\" (a HEAD answer has no body)",
            ),
            (
                health("check = \"http\"\nexpect = \"\""),
                "vipd.toml: service \"web\": health.expect: must not be empty",
            ),
            (
                health("check = \"http\"\nexpect_status = []"),
                "vipd.toml: service \"web\": health.expect_status: must list at least one status",
            ),
            (
                health("check = \"http\"\nexpect_status = [200, 600]"),
                "vipd.toml: service \"web\": health.expect_status[1]: 600 is out of range 100-599",
            ),
            (
                health("check = \"http\"\nexpect_status = [99]"),
                "vipd.toml: service \"web\": health.expect_status[0]: 99 is out of range 100-599",
            ),
            (
                health("check = \"http\"\nexpect_status = [200, 204, 200]"),
                "vipd.toml: service \"web\": health.expect_status[2]: 200 is listed twice",
            ),
            (
                health("check = \"http\"\nhost = \"db example\""),
                "vipd.toml: service \"web\": health.host: \"db example\" must not contain spaces or control characters",
            ),
            (
                health("check = \"http\"\nhost = \"::1\""),
                "vipd.toml: service \"web\": health.host: \"::1\" is not a host or host:port",
            ),
            (
                health("check = \"http\"\nhost = \"db:0\""),
                "vipd.toml: service \"web\": health.host: \"db:0\": the port must be 1-65535",
            ),
            (
                health("jitter = 0.6"),
                "vipd.toml: service \"web\": health.jitter: 0.6 is out of range 0.0-0.5",
            ),
            (
                health("jitter = -0.1"),
                "vipd.toml: service \"web\": health.jitter: -0.1 is out of range 0.0-0.5",
            ),
            (
                health("jitter = nan"),
                "vipd.toml: service \"web\": health.jitter: NaN is out of range 0.0-0.5",
            ),
            (
                health("command = [\"/bin/sh\"]"),
                "vipd.toml: service \"web\": health.command: only allowed with check = \"exec\" (check is \"tcp\")",
            ),
            (
                health("check = \"exec\""),
                "vipd.toml: service \"web\": health.command: required with check = \"exec\"",
            ),
            (
                health("check = \"exec\"\ncommand = []"),
                "vipd.toml: service \"web\": health.command: must not be empty",
            ),
            (
                health("check = \"exec\"\ncommand = [\"pg-is-primary\"]"),
                "vipd.toml: service \"web\": health.command[0]: \"pg-is-primary\" must be an absolute path",
            ),
            (
                health("check = \"exec\"\ncommand = [\"/nonexistent/pg-is-primary\"]"),
                "vipd.toml: service \"web\": health.command[0]: /nonexistent/pg-is-primary does not exist",
            ),
            (
                health("check = \"exec\"\ncommand = [\"/\"]"),
                "vipd.toml: service \"web\": health.command[0]: / is not a regular file",
            ),
            (health(&not_executable), &not_executable_message),
            (
                health("check = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"a\\u0000b\"]"),
                "vipd.toml: service \"web\": health.command[2]: must not contain a NUL character",
            ),
            (
                health("check = \"exec\"\ncommand = [\"/bin/sh\"]\nport = 8008"),
                "vipd.toml: service \"web\": health.port: has no effect with check = \"exec\" (the command is given the endpoint's address; pass a port in health.command)",
            ),
            (
                health("check = \"exec\"\ncommand = [\"/bin/sh\"]\nexpect = \"ok\""),
                "vipd.toml: service \"web\": health.expect: only allowed with check = \"tcp\" or \"http\" or \"udp\" (check is \"exec\")",
            ),
            (
                service("[service.health]\npath = \"/x\"\n"),
                "vipd.toml: service \"web\": health.path: only allowed with check = \"http\" (check is \"tcp\")",
            ),
            (
                service("[service.health]\ncheck = \"http\"\npath = \"healthz\"\n"),
                "vipd.toml: service \"web\": health.path: \"healthz\" must start with '/'",
            ),
            (
                service("[service.health]\ncheck = \"http\"\npath = \"/a b\"\n"),
                "vipd.toml: service \"web\": health.path: \"/a b\" must not contain spaces or control characters",
            ),
            (
                service("[service.health]\nport = 0\n"),
                "vipd.toml: service \"web\": health.port: 0 is out of range 1-65535",
            ),
            (
                service("[service.health]\ntimeout = \"2s\"\n"),
                "vipd.toml: service \"web\": health.timeout: 2s must be shorter than health.period (1s)",
            ),
            (
                service("[service.health]\nperiod = \"1s\"\ntimeout = \"1s\"\n"),
                "vipd.toml: service \"web\": health.timeout: 1s must be shorter than health.period (1s)",
            ),
            (
                service("[service.health]\nperiod = \"0s\"\n"),
                "vipd.toml: service \"web\": health.period: must be greater than 0",
            ),
            (
                service("[service.health]\nfailure_threshold = 0\n"),
                "vipd.toml: service \"web\": health.failure_threshold: must be at least 1",
            ),
            (
                service("[service.health]\nsuccess_threshold = 0\n"),
                "vipd.toml: service \"web\": health.success_threshold: must be at least 1",
            ),
        ];
        assert_each_reports(cases);
    }
}

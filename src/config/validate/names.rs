//! The syntax of names: DNS labels (service and port names), DNS names to resolve, the DNS
//! zone served, Linux interface names, and HTTP `Host` values.

use std::net::Ipv6Addr;

/// Checks a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub(crate) fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 63 {
        return Err(format!(
            "\"{name}\" is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "\"{name}\" may only contain lowercase letters a-z, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("\"{name}\" must not start or end with '-'"));
    }
    Ok(())
}

/// Checks a DNS name to resolve: dot-separated labels of 1-63 letters, digits, `-` or `_`
/// (`_` for SRV names such as `_http._tcp.web`), not starting or ending with `-`, at most 253
/// characters; one trailing dot (fully qualified) is allowed.
pub(super) fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if bare.len() > 253 {
        return Err(format!(
            "\"{name}\" is {} characters long; a DNS name has at most 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(format!("\"{name}\" has an empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(format!(
                "\"{name}\": label \"{label}\" is longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "\"{name}\" is not a DNS name: labels may only contain letters, digits, '-' and '_'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{name}\": label \"{label}\" must not start or end with '-'"
            ));
        }
    }
    Ok(())
}

/// Checks a zone name and returns it in lowercase without a trailing dot.
pub(super) fn check_zone(text: &str) -> Result<String, String> {
    let zone = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if zone.is_empty() {
        return Err("must not be empty (e.g. \"svc.cluster.local\")".to_owned());
    }
    if zone.len() > 200 {
        // Leaves room for `_port._proto.service.` in front within DNS's 253 characters.
        return Err(format!(
            "\"{text}\" is {} characters long; at most 200 are allowed",
            zone.len()
        ));
    }
    for label in zone.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "\"{text}\" is not a DNS name: each dot-separated label must be 1-63 letters, \
                 digits or '-', not starting or ending with '-'"
            ));
        }
    }
    Ok(zone)
}

/// Checks the syntax of a Linux interface name (whether it exists is only known at run time).
pub(super) fn check_interface_name(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() > 15 {
        return Err(format!("\"{name}\" must be 1-15 characters long"));
    }
    if name == "." || name == ".." {
        return Err(format!("\"{name}\" is not an interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
    {
        return Err(format!(
            "\"{name}\" contains {c:?}; interface names have no spaces, '/' or ':'"
        ));
    }
    Ok(())
}
/// Checks an HTTP `Host` value: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// optionally followed by `:PORT` (1-65535).
pub(super) fn check_host_port(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // The value goes verbatim into a request header.
        return Err(format!(
            "{text:?} must not contain spaces or control characters"
        ));
    }
    let not_host = || format!("\"{text}\" is not a host or host:port");
    let port = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(not_host)?;
        ip.parse::<Ipv6Addr>().map_err(|_| not_host())?;
        match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(not_host)?),
        }
    } else {
        // More than one colon: a bare IPv6 address, which needs brackets.
        if text.matches(':').count() > 1 {
            return Err(not_host());
        }
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        check_dns_name(host).map_err(|_| not_host())?;
        port
    };
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(format!("\"{text}\": the port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "web-1", "0", &"a".repeat(63)] {
            assert_eq!(check_dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        for ok in [
            "web",
            "web-headless.default.svc.cluster.local",
            "web-headless.default.svc.cluster.local.",
            "_http._tcp.web.default.svc.cluster.local",
            "Web.Example",
            "0.test",
        ] {
            assert_eq!(check_dns_name(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "must not be empty"),
            (".", "must not be empty"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a b", "is not a DNS name"),
            ("10.0.0.1:53", "is not a DNS name"),
            ("-a.test", "must not start or end with '-'"),
            ("a-.test", "must not start or end with '-'"),
            (long_label.as_str(), "longer than 63"),
            (long_name.as_str(), "at most 253"),
        ];
        for (name, want) in bad {
            let err = check_dns_name(name).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn zones_and_interface_names() {
        assert_eq!(check_zone("a.b").as_deref(), Ok("a.b"));
        assert_eq!(check_zone("local.").as_deref(), Ok("local"));
        for bad in ["", ".", "a..b", "-a.b", "a_b.c", "a b"] {
            assert!(check_zone(bad).is_err(), "{bad:?}");
        }
        for ok in ["lo", "eth0", "veth-a.10", "dummy0", &"x".repeat(15)] {
            assert_eq!(check_interface_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "eth0:1", &"x".repeat(16)] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_ports() {
        for ok in [
            "db.example.com",
            "db.example.com:8008",
            "10.0.0.1",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:8008",
            "localhost.",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        let err = |text: &str| check_host_port(text).unwrap_err();
        assert_eq!(err(""), "must not be empty");
        assert_eq!(
            err("a b"),
            "\"a b\" must not contain spaces or control characters"
        );
        assert_eq!(
            err("x\r\nEvil: 1"),
            "\"x\\r\\nEvil: 1\" must not contain spaces or control characters"
        );
        for bad in [
            "::1",
            "[::1",
            "[::1]8008",
            "[10.0.0.1]",
            "a..b",
            "a/b",
            ":80",
            "h:80:1",
        ] {
            assert_eq!(
                err(bad),
                format!("\"{bad}\" is not a host or host:port"),
                "{bad}"
            );
        }
        for bad in ["h:0", "h:65536", "h:", "h:x", "[::1]:"] {
            assert_eq!(
                err(bad),
                format!("\"{bad}\": the port must be 1-65535"),
                "{bad}"
            );
        }
    }
}

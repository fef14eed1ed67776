//! The ssh side of `exec` with `host`: the target, the client's options and the remote command
//! line. Nothing here runs anything: it builds the argv the shim runs (see the `exec` module's
//! documentation for the input fields and what they mean).
//!
//! The remote command is one string for the remote user's login shell, which must be POSIX
//! (sh, bash, dash, ...): every word is single-quoted, so nothing in it is expanded locally and
//! exactly what the step says reaches the remote `sh -c`.

use std::time::Duration;

/// `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SshTarget {
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

pub(super) fn parse_host(text: &str) -> Result<SshTarget, String> {
    let bad = |why: &str| format!("host: {text:?} is not [user@]host[:port] ({why})");
    let (user, rest) = match text.trim().rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, text.trim()),
    };
    if user.is_some_and(|user| {
        user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace)
    }) {
        return Err(bad("bad user"));
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("no closing `]`"))?;
            match after {
                "" => (address, None),
                _ => (
                    address,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after `]`"))?,
                    ),
                ),
            }
        }
        None if rest.matches(':').count() > 1 => {
            return Err(bad("write an IPv6 address in brackets, [::1]:22"))
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
        return Err(bad("bad host name"));
    }
    let port = match port {
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| bad("the port must be 1-65535"))?,
        ),
    };
    Ok(SshTarget {
        user: user.map(str::to_owned),
        host: host.to_owned(),
        port,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KnownHosts {
    Strict,
    AcceptNew,
    Off,
    File(String),
}

impl KnownHosts {
    pub(super) fn parse(text: Option<&str>) -> Result<KnownHosts, String> {
        match text.map(str::trim) {
            None | Some("strict") => Ok(KnownHosts::Strict),
            Some("accept-new") => Ok(KnownHosts::AcceptNew),
            Some("off") => Ok(KnownHosts::Off),
            Some(path) if path.contains('/') => Ok(KnownHosts::File(path.to_owned())),
            Some(other) => Err(format!("known_hosts: {other:?} is none of strict, accept-new, off, or a path (a path contains `/`)")),
        }
    }
}

pub(super) struct SshOptions {
    pub identity_file: Option<String>,
    pub known_hosts: KnownHosts,
    pub connect_timeout: Duration,
}

/// The local command: `ssh <options> -- host '<remote command>'`.
pub(super) fn ssh_argv(target: &SshTarget, options: &SshOptions, remote: &str) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned()];
    let mut option = |text: String| {
        argv.push("-o".to_owned());
        argv.push(text);
    };
    let connect_secs = options.connect_timeout.as_secs_f64().ceil().max(1.0) as u64;
    option("BatchMode=yes".to_owned());
    option(format!("ConnectTimeout={connect_secs}"));
    option("ServerAliveInterval=15".to_owned());
    option("ServerAliveCountMax=4".to_owned());
    option("LogLevel=ERROR".to_owned());
    match &options.known_hosts {
        KnownHosts::Strict => option("StrictHostKeyChecking=yes".to_owned()),
        KnownHosts::AcceptNew => option("StrictHostKeyChecking=accept-new".to_owned()),
        KnownHosts::Off => {
            option("StrictHostKeyChecking=no".to_owned());
            option("UserKnownHostsFile=/dev/null".to_owned());
            option("GlobalKnownHostsFile=/dev/null".to_owned());
        }
        KnownHosts::File(path) => {
            option("StrictHostKeyChecking=yes".to_owned());
            option(format!("UserKnownHostsFile=\"{path}\""));
        }
    }
    if let Some(identity) = &options.identity_file {
        option("IdentitiesOnly=yes".to_owned());
        argv.push("-i".to_owned());
        argv.push(identity.clone());
    }
    if let Some(port) = target.port {
        argv.push("-p".to_owned());
        argv.push(port.to_string());
    }
    if let Some(user) = &target.user {
        argv.push("-l".to_owned());
        argv.push(user.clone());
    }
    argv.push("--".to_owned());
    argv.push(target.host.clone());
    argv.push(remote.to_owned());
    argv
}

/// The command line the remote shell runs: `[cd '<cwd>' &&] exec [env 'K=V'...] '<word>'...`.
pub(super) fn remote_command(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
) -> Result<String, String> {
    let mut words = Vec::new();
    if let Some(cwd) = cwd {
        words.push(format!("cd {} &&", shell_quote(cwd)));
    }
    words.push("exec".to_owned());
    if !env.is_empty() {
        words.push("env".to_owned());
        for (key, value) in env {
            let valid = key
                .chars()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "env: {key:?} is not a variable name a remote shell accepts"
                ));
            }
            words.push(shell_quote(&format!("{key}={value}")));
        }
    }
    words.extend(argv.iter().map(|word| shell_quote(word)));
    Ok(words.join(" "))
}

/// One word for a POSIX shell, whatever it holds.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, host: &str, port: Option<u16>) -> SshTarget {
        SshTarget {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn hosts_parse_or_say_what_is_wrong() {
        let check = |text: &str, expect: Result<SshTarget, &str>| {
            let parsed = parse_host(text);
            match expect {
                Ok(expected) => assert_eq!(parsed, Ok(expected), "{text}"),
                Err(needle) => assert!(
                    parsed
                        .as_ref()
                        .is_err_and(|message| message.contains(needle) && message.contains(text)),
                    "{text}: {parsed:?}"
                ),
            }
        };
        check("broker-a", Ok(target(None, "broker-a", None)));
        check("ops@10.0.0.7", Ok(target(Some("ops"), "10.0.0.7", None)));
        check(
            "ops@10.0.0.7:2222",
            Ok(target(Some("ops"), "10.0.0.7", Some(2222))),
        );
        check("root@[::1]:22", Ok(target(Some("root"), "::1", Some(22))));
        check("[fe80::1]", Ok(target(None, "fe80::1", None)));
        check("::1", Err("brackets"));
        check("ops@host:0", Err("port"));
        check("ops@host:x", Err("port"));
        check("@host", Err("user"));
        check("-oProxyCommand=x", Err("host name"));
        check("ops@", Err("host name"));
    }

    #[test]
    fn remote_commands_survive_the_remote_shell() {
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo \"$A\"; echo it's".to_owned(),
        ];
        let env = vec![("A".to_owned(), "x y".to_owned())];
        assert_eq!(
            remote_command(&argv, &env, Some("/tmp/a b")),
            Ok(
                r#"cd '/tmp/a b' && exec env 'A=x y' 'sh' '-c' 'echo "$A"; echo it'\''s'"#
                    .to_owned()
            )
        );
        assert_eq!(
            remote_command(&["ls".to_owned()], &[], None),
            Ok("exec 'ls'".to_owned())
        );
        assert!(remote_command(&argv, &[("A B".to_owned(), "1".to_owned())], None).is_err());
    }

    #[test]
    fn ssh_never_prompts_and_checks_host_keys_as_asked() {
        let options = |known_hosts| SshOptions {
            identity_file: Some("/keys/id".to_owned()),
            known_hosts,
            connect_timeout: Duration::from_millis(4500),
        };
        let argv = ssh_argv(
            &target(Some("ops"), "h", Some(2222)),
            &options(KnownHosts::File("/k/known".to_owned())),
            "exec 'true'",
        );
        let line = argv.join(" ");
        for needle in [
            "-o BatchMode=yes",
            "-o ConnectTimeout=5",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=\"/k/known\"",
            "-i /keys/id",
            "-p 2222",
            "-l ops",
        ] {
            assert!(line.contains(needle), "{needle} missing from {line}");
        }
        assert_eq!(&argv[argv.len() - 3..], ["--", "h", "exec 'true'"]);
        let off = ssh_argv(&target(None, "h", None), &options(KnownHosts::Off), "x").join(" ");
        assert!(
            off.contains("StrictHostKeyChecking=no")
                && off.contains("UserKnownHostsFile=/dev/null"),
            "{off}"
        );
        assert_eq!(
            KnownHosts::parse(Some("accept-new")),
            Ok(KnownHosts::AcceptNew)
        );
        assert!(KnownHosts::parse(Some("stict")).is_err());
    }
}

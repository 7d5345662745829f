//! `SHOAL_*` environment variables over the config file: the pure overlay
//! ([`Config::from_vars_and_text`], never the process environment: these tests run in parallel
//! threads), then the binary end to end.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

use shoal::cluster::config::env::EnvError;
use shoal::cluster::config::{example, Config, ConfigError};

fn env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars_and_text(None, "", vars.iter().copied())
}

fn file_and_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars_and_text(Some(text), "shoal.toml", vars.iter().copied())
}

#[test]
fn the_documented_variables_set_their_keys() {
    let c = env(&[
        ("SHOAL_HUB__LISTEN", "0.0.0.0:4433"),
        ("SHOAL_HUB__TOKEN_TTL", "30s"),
        ("SHOAL_TRANSPORT__HANDSHAKES__RETRY_ABOVE", "100"),
        ("SHOAL_DATA_DIR", "/var/lib/shoal"),
    ])
    .unwrap();
    assert_eq!(c.hub.listen, "0.0.0.0:4433".parse().unwrap());
    assert_eq!(c.hub.token_ttl, Duration::from_secs(30));
    assert_eq!(c.transport.handshakes.retry_above, 100);
    assert_eq!(c.data_dir, std::path::PathBuf::from("/var/lib/shoal"));
    let mut want = Config::default();
    want.hub.listen = c.hub.listen;
    want.hub.token_ttl = c.hub.token_ttl;
    want.transport.handshakes.retry_above = 100;
    want.data_dir = c.data_dir.clone();
    assert_eq!(c, want, "nothing else changes");
}

#[test]
fn the_environment_wins_over_the_file_which_keeps_the_rest() {
    let text = "[hub]\ntoken_ttl = \"20s\"\n[shards]\ncount = 6\ngroups = 3\n";
    let c = file_and_env(text, &[("SHOAL_HUB__TOKEN_TTL", "45s")]).unwrap();
    assert_eq!(c.hub.token_ttl, Duration::from_secs(45));
    assert_eq!((c.shards.count, c.shards.groups), (6, 3));
    // Without variables, exactly the file.
    assert_eq!(
        file_and_env(text, &[]).unwrap(),
        Config::parse(text, "t").unwrap()
    );
}

#[test]
fn values_are_toml_values_else_strings() {
    let c = env(&[
        ("SHOAL_POOL__ENABLED", "true"),
        ("SHOAL_POOL__TARGET_UTILIZATION", "0.5"),
        // An integer where a float goes.
        ("SHOAL_TRANSPORT__HANDSHAKES__PER_IP_RATE", "50"),
        // A TOML value that does not fit is taken as the text it was.
        ("SHOAL_DATA_DIR", "1234"),
        ("SHOAL_HUB__TOKEN_TTL", "\"45s\""),
        ("SHOAL_ADMIN__LISTEN", "off"),
        ("SHOAL_POOL__POLICY", "reactive"),
    ])
    .unwrap();
    assert!(c.pool.enabled);
    assert_eq!(c.pool.target_utilization, 0.5);
    assert_eq!(c.transport.handshakes.per_ip_rate, 50.0);
    assert_eq!(c.data_dir, std::path::PathBuf::from("1234"));
    assert_eq!(c.hub.token_ttl, Duration::from_secs(45));
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.pool.policy, shoal::pool::policy::Policy::Reactive);
}

#[test]
fn every_optional_key_can_be_set() {
    // Each with its example value, quoted as in the example and bare (a string either way).
    for bare in [false, true] {
        let vars: Vec<(String, String)> = example::OPTIONAL
            .iter()
            .map(|(path, ex)| {
                let v = if bare { ex.trim_matches('"') } else { ex };
                (shoal::cluster::config::env::var_name(path), v.to_string())
            })
            .collect();
        let c = Config::from_vars_and_text(None, "", vars).unwrap();
        assert!(c.hub.control_listen.is_some() && c.tls.cert.is_some());
        assert!(c.admin.mirror_key.is_some() && c.lb.shards_via.is_some());
        let text = example::render_effective(&c);
        for (path, ex) in example::OPTIONAL {
            let key = path.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("\n{key} = {ex}\n")),
                "{path} not set: {text}"
            );
        }
    }
}

#[test]
fn a_double_underscore_name_of_no_key_is_an_error_naming_the_nearest_keys() {
    let e = env(&[("SHOAL_HUB__LISEN", "1.2.3.4:5")]).unwrap_err();
    match &e {
        ConfigError::Env(EnvError::UnknownKey { var, nearest }) => {
            assert_eq!(var, "SHOAL_HUB__LISEN");
            assert_eq!(nearest[0], "SHOAL_HUB__LISTEN");
        }
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("SHOAL_HUB__LISEN") && text.contains("SHOAL_HUB__LISTEN (hub.listen)"),
        "{text}"
    );
    // A key of a subsection, named as if it were of the section.
    let e = env(&[("SHOAL_TRANSPORT__RETRY_ABOVE", "5")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("SHOAL_TRANSPORT__HANDSHAKES__RETRY_ABOVE"),
        "{e}"
    );
    // The rule's spelling is upper case.
    let e = env(&[("SHOAL_hub__listen", "1.2.3.4:5")]).unwrap_err();
    assert!(e.to_string().contains("SHOAL_HUB__LISTEN"), "{e}");
    // A section is not a key.
    let e = env(&[("SHOAL_TRANSPORT__HANDSHAKES", "{ retry_above = 5 }")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Env(EnvError::Section { path, .. }) if path == "transport.handshakes"),
        "{e:?}"
    );
}

#[test]
fn names_without_double_underscore_that_are_no_top_level_key_are_ignored() {
    let c = env(&[
        ("SHOAL_ADMIN_TOKEN_FILE", "/etc/shoal/token"),
        ("SHOAL_CLUSTER_SECRET", "00"),
        ("SHOAL_HUB", "1"),
        ("SHOAL_data_dir", "/elsewhere"),
        ("PATH", "/usr/bin"),
        ("HUB__LISTEN", "nope"),
    ])
    .unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn a_value_of_the_wrong_type_names_its_variable() {
    for (var, value) in [
        ("SHOAL_SHARDS__COUNT", "many"),
        ("SHOAL_SHARDS__COUNT", "1.5"),
        ("SHOAL_HUB__LISTEN", "nowhere"),
        ("SHOAL_POOL__ENABLED", "yes"),
    ] {
        let e = env(&[(var, value)]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Env(EnvError::Value { var: v, .. }) if v == var),
            "{var}={value}: {e:?}"
        );
        assert!(e.to_string().contains(var), "{e}");
    }
    let bad = OsString::from_vec(vec![0xff, 0xfe]);
    let e =
        Config::from_vars_and_text(None, "", [(OsString::from("SHOAL_CLUSTER"), bad)]).unwrap_err();
    assert!(
        matches!(e, ConfigError::Env(EnvError::NotUnicode { .. })),
        "{e:?}"
    );
}

#[test]
fn a_broken_rule_names_the_file_and_the_variables() {
    let e = file_and_env("[shards]\ncount = 6\n", &[("SHOAL_POOL__STEP", "10ms")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config shoal.toml with SHOAL_POOL__STEP: pool.step: must be at least 100ms"
    );
    let e = env(&[("SHOAL_POOL__STEP", "10ms")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config SHOAL_POOL__STEP: pool.step: must be at least 100ms"
    );
    // The file's own errors still name it alone.
    let e = file_and_env("[hub]\nnope = 1\n", &[("SHOAL_HUB__TOKEN_TTL", "1s")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Parse { path, .. } if path == "shoal.toml"),
        "{e:?}"
    );
}

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

#[test]
fn shoal_up_prints_the_environment_over_the_file_and_the_flags_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        "[hub]\nlisten = \"127.0.0.1:5000\"\ntoken_ttl = \"20s\"\n",
    )
    .unwrap();
    let out = shoal()
        .args(["up", "--print-config", "--config"])
        .arg(&path)
        .args(["--shards", "6", "--groups", "3"])
        .env("SHOAL_HUB__LISTEN", "127.0.0.1:0")
        .env("SHOAL_SHARDS__COUNT", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Config::parse(&String::from_utf8(out.stdout).unwrap(), "stdout").unwrap();
    assert_eq!(c.hub.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.hub.token_ttl, Duration::from_secs(20));
    assert_eq!(c.shards.count, 6);
}

#[test]
fn shoal_up_without_a_file_takes_the_environment_and_prints_the_optional_keys() {
    let out = shoal()
        .args(["up", "--print-config"])
        .env("SHOAL_HUB__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let c = Config::parse(&text, "stdout").unwrap();
    assert_eq!(c.hub.listen, "127.0.0.1:0".parse().unwrap());
    assert!(text.contains("\n# control_listen = "), "{text}");
}

#[test]
fn a_bad_variable_makes_shoal_up_exit_2_naming_it() {
    for (var, value) in [
        ("SHOAL_HUB__LISEN", "127.0.0.1:0"),
        ("SHOAL_SHARDS__COUNT", "x"),
    ] {
        let out = shoal()
            .args(["up", "--print-config"])
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

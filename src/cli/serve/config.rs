//! The TOML config file (`--config`) and how the settings layer.
//!
//! A setting's value is, in order of precedence: its flag, its `BATON_*` environment variable,
//! its key in the config file, and its default. The layering is generic, never field by field:
//! clap reads flags over environment variables into a [`ServeArgs`] whose unset settings are
//! `None` (no serve flag has a clap default, which a test checks), the file is read into another
//! (`deny_unknown_fields`: a misspelt key fails start-up, naming it), and each is turned into a
//! map of its given keys by serde, the higher layer's keys replacing the lower's. A new flag is
//! thereby a new file key too, with nothing to add here.
//!
//! Durations are written `10s`, `500ms`, `2m`, `1h30m` or `7d` in flags, variables and the file.
//! The settings that used to be integers of milliseconds under a `_ms` name keep those names
//! working: `--lease-ms 1500` is a hidden alias of `--lease`, `lease_ms = 1500` an alias key in
//! the file, and `BATON_LEASE_MS` a variable below `BATON_LEASE` (see [`LEGACY_MS`]); a bare
//! number, as they were given, counts as milliseconds.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::args::ServeArgs;

/// The duration settings that were integers of milliseconds named `<key>_ms`. Each still takes
/// its old flag (`--<key>-ms`), file key (`<key>_ms`) and variable (`BATON_<KEY>_MS`).
pub const LEGACY_MS: [&str; 11] = [
    "default_timeout",
    "default_initial_backoff",
    "default_max_backoff",
    "lease",
    "claim_interval",
    "drain_timeout",
    "progress_flush",
    "registry_refresh",
    "connect_timeout",
    "retention_sweep",
    "tls_reload",
];

/// A duration setting: `10s`, `500ms`, `2m`, `1h30m`, `7d` (units ms, s, m, h, d), or a bare
/// number of milliseconds. In the file, an integer is milliseconds too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }

    /// In whole milliseconds, saturating.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        HumanDuration(duration)
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            let ms: u64 = trimmed
                .parse()
                .map_err(|_| format!("duration {text:?} is too long"))?;
            return Ok(HumanDuration(Duration::from_millis(ms)));
        }
        crate::cli::output::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| format!("{e} (expected a duration such as 10s, 500ms or 2m)"))
    }
}

/// The largest unit that writes it exactly: `90s`, `1500ms`, `2m`, `7d`.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ];
        match units
            .iter()
            .find(|(size, _)| ms > 0 && ms.is_multiple_of(*size))
        {
            Some((size, unit)) => write!(f, "{}{unit}", ms / size),
            None => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"500ms\" or \"2m\", or milliseconds")
            }

            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_millis(ms)))
            }

            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<HumanDuration, E> {
                u64::try_from(ms)
                    .map(|ms| HumanDuration(Duration::from_millis(ms)))
                    .map_err(|_| E::custom(format!("{ms} is a negative duration")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `--retention`: a duration such as `7d`, `12h`, `30m` or `90s`, or `off` (`None`: keep
/// finished transactions forever).
pub fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let age = crate::cli::output::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 7d, 12h, 30m or 90s, or off)"))?;
    if age.is_zero() {
        return Err(format!(
            "{text:?} must be greater than 0 (off keeps transactions forever)"
        ));
    }
    Ok(Some(age))
}

/// Reads and checks a config file.
pub fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// The `BATON_<KEY>_MS` variables of [`LEGACY_MS`] that are set, as a layer under the current
/// variables. `var` looks a variable up (the process environment, or a test's).
pub fn legacy_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Map<String, Value>> {
    let mut layer = Map::new();
    for key in LEGACY_MS {
        let name = format!("BATON_{}_MS", key.to_ascii_uppercase());
        if let Some(text) = var(&name) {
            let value: HumanDuration = text.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            layer.insert(key.to_string(), Value::String(value.to_string()));
        }
    }
    Ok(layer)
}

/// The settings `args` gives, as a map from file key to value: unset (`None`, or an empty list)
/// ones are left out.
fn given(args: &ServeArgs) -> anyhow::Result<Map<String, Value>> {
    let Value::Object(map) = serde_json::to_value(args).context("settings")? else {
        anyhow::bail!("settings are not a map");
    };
    Ok(map
        .into_iter()
        .filter(|(_, value)| match value {
            Value::Null => false,
            Value::Array(items) => !items.is_empty(),
            _ => true,
        })
        .collect())
}

/// The layers, lowest first, each replacing the keys it gives, read back as settings.
pub fn layer(layers: impl IntoIterator<Item = Map<String, Value>>) -> anyhow::Result<ServeArgs> {
    let mut merged = Map::new();
    for layer in layers {
        merged.extend(layer);
    }
    serde_json::from_value(Value::Object(merged)).context("merging the settings")
}

impl ServeArgs {
    /// Flags and environment over the file's values (and the old `BATON_*_MS` variables between
    /// them), as [`layer`]s. `config` is kept; the file is not read again by a second call.
    pub(crate) fn merged(self) -> anyhow::Result<ServeArgs> {
        self.merged_with_env(|name| std::env::var(name).ok())
    }

    fn merged_with_env(self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<ServeArgs> {
        let file = match &self.config {
            Some(path) => given(&read_file(path)?)?,
            None => Map::new(),
        };
        let mut merged = layer([file, legacy_env(var)?, given(&self)?])?;
        merged.config = None;
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    /// The field names serde knows `ServeArgs` by: the keys of the file.
    fn file_keys() -> Vec<&'static str> {
        struct Fields<'a>(&'a mut Vec<&'static str>);
        impl<'de> serde::Deserializer<'de> for Fields<'_> {
            type Error = serde::de::value::Error;

            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("only a struct is asked for"))
            }

            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.extend(fields);
                Err(serde::de::Error::custom("fields read"))
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut keys = Vec::new();
        let _ = ServeArgs::deserialize(Fields(&mut keys));
        assert!(keys.contains(&"listen"), "{keys:?}");
        keys
    }

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["baton", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_serve_flag_has_a_file_key_a_variable_and_no_clap_default() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let keys = file_keys();
        let mut flags = Vec::new();
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" {
                continue;
            }
            flags.push(id);
            assert!(
                keys.contains(&id),
                "--{} has no key {id:?} in the config file",
                arg.get_long().unwrap_or(id)
            );
            // A clap default would be taken for a given value and hide the file's.
            assert!(
                arg.get_default_values().is_empty(),
                "--{id} has a clap default: write it in to_config instead"
            );
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env,
                Some(format!("BATON_{}", id.to_ascii_uppercase())),
                "--{id}"
            );
            let old = format!("{}-ms", id.replace('_', "-"));
            let aliases = arg.get_all_aliases().unwrap_or_default();
            assert_eq!(
                aliases.contains(&old.as_str()),
                LEGACY_MS.contains(&id),
                "--{id}: the old --{old} is an alias exactly for the LEGACY_MS settings"
            );
        }
        // And the other way: every file key is a flag.
        let old_keys: Vec<String> = LEGACY_MS.iter().map(|key| format!("{key}_ms")).collect();
        for key in keys
            .iter()
            .filter(|k| !old_keys.iter().any(|old| old == *k))
        {
            assert!(flags.contains(key), "file key {key:?} has no flag");
        }
        for key in LEGACY_MS {
            assert!(keys.contains(&key), "{key}");
        }
    }

    #[test]
    fn durations_take_units_and_bare_milliseconds() {
        let d = |text: &str| text.parse::<HumanDuration>().map(HumanDuration::get);
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1500"), Ok(Duration::from_millis(1500)));
        for bad in ["", "10 parsecs", "1.5s", "-1", "s", "10w"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        for (ms, text) in [
            (0, "0ms"),
            (1500, "1500ms"),
            (90_000, "90s"),
            (120_000, "2m"),
        ] {
            let value = HumanDuration(Duration::from_millis(ms));
            assert_eq!(value.to_string(), text);
            assert_eq!(text.parse(), Ok(value));
        }
    }

    #[test]
    fn old_millisecond_spellings_still_work_on_every_layer() {
        let args = serve_args(&["--lease-ms", "1500", "--claim-interval", "250ms"]);
        assert_eq!(args.lease, Some(Duration::from_millis(1500).into()));
        assert_eq!(args.claim_interval, Some(Duration::from_millis(250).into()));
        let file: ServeArgs =
            toml::from_str("lease_ms = 3000\ndrain_timeout = \"20s\"\ntls_reload = 50").unwrap();
        assert_eq!(file.lease, Some(Duration::from_secs(3).into()));
        assert_eq!(file.drain_timeout, Some(Duration::from_secs(20).into()));
        assert_eq!(file.tls_reload, Some(Duration::from_millis(50).into()));
        for key in LEGACY_MS {
            let old: ServeArgs = toml::from_str(&format!("{key}_ms = 1234")).unwrap();
            let new: ServeArgs = toml::from_str(&format!("{key} = \"1234ms\"")).unwrap();
            let argv = format!("--{}-ms", key.replace('_', "-"));
            let flag = serve_args(&[&argv, "1234"]);
            let (old, new, flag) = (
                given(&old).unwrap(),
                given(&new).unwrap(),
                given(&flag).unwrap(),
            );
            assert_eq!(old, new, "{key}");
            assert_eq!(flag, new, "{key}");
            assert_eq!(new[key], "1234ms", "{key}");
        }
        let env =
            legacy_env(|name| (name == "BATON_LEASE_MS").then(|| "2500".to_string())).unwrap();
        assert_eq!(env["lease"], "2500ms");
        let err = legacy_env(|name| (name == "BATON_LEASE_MS").then(|| "soon".to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("BATON_LEASE_MS: "), "{err}");
        let err = serve_args_err(&["--lease", "soon"]);
        assert!(err.contains("--lease"), "{err}");
    }

    fn serve_args_err(argv: &[&str]) -> String {
        let mut full = vec!["baton", "serve"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap_err().to_string()
    }

    #[test]
    fn flags_win_over_old_variables_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nlease = \"20s\"\nclaim_interval_ms = 300\n\
             max_steps = 7\nendpoints = [\"a=http://127.0.0.1:1\"]\npolicies = [\"a=random\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..serve_args(&[
                "--listen",
                "127.0.0.1:9100",
                "--endpoint",
                "b=http://127.0.0.1:2",
            ])
        };
        let no_env = |_: &str| None;
        let merged = args.clone().merged_with_env(no_env).unwrap();
        assert_eq!(merged.listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(merged.lease, Some(Duration::from_secs(20).into()));
        assert_eq!(
            merged.claim_interval,
            Some(Duration::from_millis(300).into())
        );
        assert_eq!(merged.max_steps, Some(7));
        // A list given replaces the file's; one not given keeps it.
        assert_eq!(merged.endpoints, ["b=http://127.0.0.1:2"]);
        assert_eq!(merged.policies, ["a=random"]);
        assert_eq!(merged.config, None);

        // BATON_LEASE_MS sits between the file and the flags and current variables.
        let old_lease = |name: &str| (name == "BATON_LEASE_MS").then(|| "4000".to_string());
        let merged = args.clone().merged_with_env(old_lease).unwrap();
        assert_eq!(merged.lease, Some(Duration::from_secs(4).into()));
        let flagged = ServeArgs {
            lease: Some(Duration::from_secs(9).into()),
            ..args
        };
        let merged = flagged.merged_with_env(old_lease).unwrap();
        assert_eq!(merged.lease, Some(Duration::from_secs(9).into()));
    }

    #[test]
    fn the_example_file_in_the_operations_guide_is_valid() {
        let guide = include_str!("../../../docs/OPERATIONS.md");
        let example: String = guide
            .lines()
            .skip_while(|line| *line != "    # baton.toml")
            .take_while(|line| !line.is_empty())
            .map(|line| format!("{}\n", line.trim_start()))
            .collect();
        assert!(example.contains("lease = \"15s\""), "{example}");
        let file: ServeArgs = toml::from_str(&example).unwrap();
        assert_eq!(file.drain_timeout, Some(Duration::from_secs(20).into()));
    }

    #[test]
    fn a_misspelt_or_mistyped_file_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        let error = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let args = ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            };
            format!("{:#}", args.merged_with_env(|_| None).unwrap_err())
        };
        let err = error("leese = \"15s\"\n");
        assert!(err.contains("unknown field `leese`"), "{err}");
        assert!(err.contains("baton.toml is not valid"), "{err}");
        let err = error("lease = \"soon\"\n");
        assert!(err.contains("lease") && err.contains("soon"), "{err}");
        let err = error("lease = \"1s\"\nlease_ms = 1000\n");
        assert!(err.contains("duplicate field `lease`"), "{err}");
        let err = error("config = \"other.toml\"\n");
        assert!(err.contains("unknown field `config`"), "{err}");
    }
}

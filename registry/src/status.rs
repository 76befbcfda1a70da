//! The one shape every stored status takes (runs, dataset versions, jobs, job runs): a Rust enum
//! whose variants are the upper-case strings the schema's `CHECK (status IN (...))` allows, with
//! `as_str` (what is written to the database), `FromStr` (case-insensitive, what is read back
//! and what the CLI parses), `Display`, and serde as the same upper-case string, so that the
//! JSON of the HTTP API and of `--format json` shows exactly what is stored.

/// `status_enum!(Name, "what", { Variant => "STORED", ... })` declares the enum and its impls;
/// `what` names it in a parse error ("unknown run status ...").
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every status, in the schema's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> anyhow::Result<Self> {
                let upper = s.to_ascii_uppercase();
                match $name::ALL.iter().find(|v| v.as_str() == upper) {
                    Some(v) => Ok(*v),
                    None => anyhow::bail!(
                        "unknown {} status {s:?}: expected {}",
                        $what,
                        $crate::status::one_of(&$name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>())
                    ),
                }
            }
        }
    };
}
pub(crate) use status_enum;

/// `A, B, C or D`.
pub(crate) fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::{DatasetStatus, RunStatus};

    #[test]
    fn statuses_round_trip_through_their_stored_strings() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(
            "finished".parse::<DatasetStatus>().unwrap(),
            DatasetStatus::Finished
        );
        assert_eq!(
            "done".parse::<RunStatus>().unwrap_err().to_string(),
            "unknown run status \"done\": expected RUNNING, FINISHED, FAILED or KILLED"
        );
    }
}

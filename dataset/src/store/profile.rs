//! Credentials and endpoint for S3 the way the AWS tools find them: the `AWS_*` environment
//! variables first, then the profile (`AWS_PROFILE`, else `default`) in the shared files
//! `~/.aws/credentials` and `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).
//! The values are handed to the store client only; nothing here is logged or stored.
use std::path::PathBuf;

/// The client options for a store URL's scheme, as (object_store config key, value) pairs in
/// rising precedence: the profile files, then the environment.
pub(crate) fn client_options() -> Vec<(String, String)> {
    let mut options = profile_options();
    for (key, value) in std::env::vars() {
        if ["AWS_", "GOOGLE_", "AZURE_"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            options.push((key.to_ascii_lowercase(), value));
        }
    }
    // An in-cluster store is often served over plain HTTP; an endpoint that says so is allowed.
    let endpoint = options
        .iter()
        .rev()
        .find(|(k, _)| k == "aws_endpoint_url" || k == "aws_endpoint")
        .map(|(_, v)| v.clone());
    if endpoint.is_some_and(|e| e.starts_with("http://"))
        && !options.iter().any(|(k, _)| k == "aws_allow_http")
    {
        options.insert(0, ("aws_allow_http".into(), "true".into()));
    }
    options
}

/// The keys of the selected profile, from the credentials file and then the config file.
fn profile_options() -> Vec<(String, String)> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let mut options = Vec::new();
    for (path, section) in [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.clone(),
        ),
        (
            file("AWS_CONFIG_FILE", "config"),
            if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            },
        ),
    ] {
        let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
            continue;
        };
        options.extend(
            section_keys(&text, &section)
                .into_iter()
                .filter_map(|(k, v)| Some((store_key(&k)?.to_string(), v))),
        );
    }
    options
}

/// The `key = value` lines of `[section]` in an INI-style AWS file.
fn section_keys(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            keys.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    keys
}

/// The object_store config key of a shared-file key, for the keys albef passes on.
fn store_key(file_key: &str) -> Option<&'static str> {
    Some(match file_key {
        "aws_access_key_id" => "aws_access_key_id",
        "aws_secret_access_key" => "aws_secret_access_key",
        "aws_session_token" => "aws_session_token",
        "region" => "aws_region",
        "endpoint_url" => "aws_endpoint_url",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_section_alone_is_read() {
        let text = "[default]\naws_access_key_id = A\n\n[profile lab]\nregion=eu-west-1\n endpoint_url = http://s3.lab:9000 \n[other]\nregion = x\n";
        assert_eq!(
            section_keys(text, "default"),
            [("aws_access_key_id".into(), "A".into())]
        );
        assert_eq!(
            section_keys(text, "profile lab"),
            [
                ("region".to_string(), "eu-west-1".to_string()),
                ("endpoint_url".into(), "http://s3.lab:9000".into())
            ]
        );
        assert_eq!(store_key("region"), Some("aws_region"));
        assert_eq!(store_key("output"), None);
    }
}

use std::fmt;

/// A sync channel: what travels together under one set of watermarks.
///
/// The Drive channel carries shared records only; each app has its own channel carrying
/// only that app's rows. Neither side lets one channel carry the other's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Shared records, served at the root.
    Drive,
    /// The rows of one app, served at `/apps/{app id}`.
    App(String),
}

impl Channel {
    /// The URL path prefix of this channel on a server (`""` for Drive, `/apps/X` for app X).
    pub fn base_path(&self) -> String {
        match self {
            Channel::Drive => String::new(),
            Channel::App(app) => format!("/apps/{app}"),
        }
    }

    /// The object-storage key prefix this channel's blobs live under.
    pub fn key_prefix(&self) -> String {
        match self {
            Channel::Drive => "shared/".into(),
            Channel::App(app) => format!("apps/{app}/"),
        }
    }

    /// A stable name for persisted state: `drive` or `app:X`.
    pub fn state_key(&self) -> String {
        self.to_string()
    }

    /// Parses `drive` or `app:X`.
    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "drive" => Some(Channel::Drive),
            _ => s
                .strip_prefix("app:")
                .filter(|a| valid_app_id(a))
                .map(|a| Channel::App(a.to_string())),
        }
    }
}

/// Whether `id` is a usable app id: 1..=64 bytes of ASCII letters, digits, `-`, `_`, `.`
/// (it appears in URL paths and object keys), and not `.` or `..`.
pub fn valid_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Drive => f.write_str("drive"),
            Channel::App(app) => write!(f, "app:{app}"),
        }
    }
}

//! How a setting is declared once: the [`settings!`] macro turns one declaration a setting
//! into its row of the table (a `pub const` [`Setting`]), its place in [`super::SETTINGS`], and,
//! for a setting that belongs to a group, its field in the group's struct, its default and its
//! typed parse. The row constructors ([`row`]), the typed readers ([`read`], [`default`]) and
//! the conversions from a row's value to a field's type ([`FromNumber`], [`FromText`]) are
//! named by kind, as the declarations name it.

use std::time::Duration;

use super::{Setting, Unit};
use crate::error::Result;

/// The rules a group's values must meet together (each one alone is range-checked as it is
/// read): `from_lookup` checks them after reading the group. The rules live with the
/// configuration, a layer up; a group without any implements it empty.
pub trait Validate {
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Declares the settings. Each declaration is the setting's documentation (`///` lines, one
/// paragraph), then `NAME: kind(arguments), read_by` and, in a group read into a struct,
/// `=> field: Type`. The groups come in the order the table lists them:
///
/// - `pub struct Group { ... }` (with its attributes): each setting is a field of `Group`,
///   which gets a `Default` (the table's defaults) and `from_lookup` (every field parsed,
///   range-checked and converted to its type, then the group's [`Validate`] rules);
/// - `read_where_used { ... }`: settings read where they are used, with
///   `NAME.get(lookup)` or `NAME.number(lookup)` (the database's, the logs').
///
/// A field read as a `Duration` must have a time unit: checked when the crate compiles.
macro_rules! settings {
    (@groups [$($done:ident)*]
        $(#[$meta:meta])*
        pub struct $group:ident {
            $(
                $(#[doc = $doc:literal])+
                $name:ident: $kind:ident($($arg:expr),* $(,)?), $read_by:ident
                    => $field:ident: $ty:ty;
            )+
        }
        $($rest:tt)*
    ) => {
        $( settings!(@row [$($doc)+] $name $kind($($arg),*), $read_by); )+

        $(#[$meta])*
        pub struct $group {
            $(
                #[doc = concat!("`", stringify!($name), "`:")]
                $(#[doc = $doc])+
                pub $field: $ty,
            )+
        }

        impl Default for $group {
            fn default() -> Self {
                $group {
                    $( $field: $crate::settings::declare::default::$kind(&$name), )+
                }
            }
        }

        impl $group {
            /// Reads the group through `lookup`: each value parsed and range-checked (unset or
            /// blank: the default), then the group's rules. Errors name the setting.
            pub fn from_lookup(
                lookup: &impl Fn(&str) -> Option<String>,
            ) -> $crate::error::Result<Self> {
                let group = $group {
                    $( $field: $crate::settings::declare::read::$kind(&$name, lookup)?, )+
                };
                $crate::settings::Validate::validate(&group)?;
                Ok(group)
            }
        }

        $(
            const _: () = assert!(
                !<$ty as $crate::settings::declare::Field>::TIME || $name.unit.is_time(),
                concat!(stringify!($name), " is read as a Duration: its unit must be a time"),
            );
        )+

        settings!(@groups [$($done)* $($name)+] $($rest)*);
    };
    (@groups [$($done:ident)*]
        read_where_used {
            $(
                $(#[doc = $doc:literal])+
                $name:ident: $kind:ident($($arg:expr),* $(,)?), $read_by:ident;
            )+
        }
        $($rest:tt)*
    ) => {
        $( settings!(@row [$($doc)+] $name $kind($($arg),*), $read_by); )+
        settings!(@groups [$($done)* $($name)+] $($rest)*);
    };
    (@groups [$($done:ident)*]) => {
        /// The table, in the order the documentation lists it.
        pub const SETTINGS: &[$crate::settings::Setting] = &[$($done),*];
    };
    (@row [$($doc:literal)+] $name:ident $kind:ident($($arg:expr),*), $read_by:ident) => {
        $(#[doc = $doc])+
        pub const $name: $crate::settings::Setting = $crate::settings::declare::row::$kind(
            stringify!($name),
            $($arg,)*
            $crate::settings::ReadBy::$read_by,
            concat!($($doc),+).trim_ascii(),
        );
    };
    ($($groups:tt)*) => {
        settings!(@groups [] $($groups)*);
    };
}

/// A row of each kind, as the declarations name the kind.
pub mod row {
    use std::ops::RangeInclusive;

    use super::super::{Kind, ReadBy, Setting, Unit};

    /// A whole number in `range`, `default` when unset.
    pub const fn number(
        name: &'static str,
        range: RangeInclusive<u32>,
        default: u32,
        unit: Unit,
        read_by: ReadBy,
        doc: &'static str,
    ) -> Setting {
        let (min, max) = (*range.start(), *range.end());
        Setting {
            name,
            kind: Kind::Number { min, max, default },
            unit,
            read_by,
            doc,
        }
    }

    /// A whole number in `range`, or unset, which means `unset` (a few words: "adaptive").
    pub const fn optional(
        name: &'static str,
        range: RangeInclusive<u32>,
        unit: Unit,
        unset: &'static str,
        read_by: ReadBy,
        doc: &'static str,
    ) -> Setting {
        let (min, max) = (*range.start(), *range.end());
        Setting {
            name,
            kind: Kind::OptionalNumber { min, max, unset },
            unit,
            read_by,
            doc,
        }
    }

    /// Free text, `default` when unset (empty: unset).
    pub const fn text(
        name: &'static str,
        default: &'static str,
        read_by: ReadBy,
        doc: &'static str,
    ) -> Setting {
        Setting {
            name,
            kind: Kind::Text { default },
            unit: Unit::Plain,
            read_by,
            doc,
        }
    }

    /// One of `values`, `default` when unset (empty: the front-end's own).
    pub const fn choice(
        name: &'static str,
        values: &'static [&'static str],
        default: &'static str,
        read_by: ReadBy,
        doc: &'static str,
    ) -> Setting {
        Setting {
            name,
            kind: Kind::Choice { values, default },
            unit: Unit::Plain,
            read_by,
            doc,
        }
    }
}

/// A field's value from its setting through a lookup, by kind.
pub mod read {
    use super::{FromNumber, FromText};
    use crate::error::Result;
    use crate::settings::Setting;

    pub fn number<T: FromNumber>(
        setting: &Setting,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<T> {
        Ok(T::from_number(setting.number(lookup)?, setting.unit))
    }

    pub fn optional<T: FromNumber>(
        setting: &Setting,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<T>> {
        let value = setting.optional_number(lookup)?;
        Ok(value.map(|n| T::from_number(n, setting.unit)))
    }

    pub fn text<T: FromText>(
        setting: &Setting,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<T> {
        Ok(T::from_text(
            setting.get(lookup).or_else(|| super::default_text(setting)),
        ))
    }

    /// One of the setting's words (trimmed, any case), else an error naming them.
    pub fn choice<T: FromText>(
        setting: &Setting,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<T> {
        let Some(given) = setting.get(lookup) else {
            return Ok(T::from_text(super::default_text(setting)));
        };
        let word = given.trim().to_ascii_lowercase();
        let crate::settings::Kind::Choice { values, .. } = setting.kind else {
            return Ok(T::from_text(Some(word)));
        };
        if values.contains(&word.as_str()) {
            return Ok(T::from_text(Some(word)));
        }
        Err(crate::error::Error::Setting {
            name: setting.name.into(),
            reason: format!(
                "{:?} is not one of {}",
                given.chars().take(40).collect::<String>(),
                values.join(", ")
            ),
        })
    }
}

/// A field's default from its setting's row, by kind.
pub mod default {
    use super::{FromNumber, FromText};
    use crate::settings::Setting;

    pub fn number<T: FromNumber>(setting: &Setting) -> T {
        T::from_number(setting.default_number(), setting.unit)
    }

    pub fn optional<T>(_: &Setting) -> Option<T> {
        None
    }

    pub fn text<T: FromText>(setting: &Setting) -> T {
        T::from_text(super::default_text(setting))
    }

    pub fn choice<T: FromText>(setting: &Setting) -> T {
        T::from_text(super::default_text(setting))
    }
}

/// The default of a text, None when it has none.
fn default_text(setting: &Setting) -> Option<String> {
    Some(setting.default_text()).filter(|d| !d.is_empty())
}

/// A field's type: whether it is a time (its setting's unit must then be one).
pub trait Field {
    const TIME: bool = false;
}

impl Field for u32 {}
impl Field for bool {}
impl Field for Option<u32> {}
impl Field for String {}
impl Field for Option<String> {}
impl Field for Duration {
    const TIME: bool = true;
}
impl Field for Option<Duration> {
    const TIME: bool = true;
}

/// A field's type read from a whole number (of the setting's unit).
pub trait FromNumber {
    fn from_number(n: u32, unit: Unit) -> Self;
}

impl FromNumber for u32 {
    fn from_number(n: u32, _: Unit) -> Self {
        n
    }
}

/// 1: on; 0: off.
impl FromNumber for bool {
    fn from_number(n: u32, _: Unit) -> Self {
        n == 1
    }
}

impl FromNumber for Duration {
    fn from_number(n: u32, unit: Unit) -> Self {
        unit.duration(n)
    }
}

/// A number whose 0 means none (`SHOP_DEADLOCK_TIMEOUT_MS`: 0, the server's).
impl FromNumber for Option<u32> {
    fn from_number(n: u32, _: Unit) -> Self {
        (n > 0).then_some(n)
    }
}

/// A time whose 0 means none (`TIME_BUDGET_SECONDS`: 0, no budget).
impl FromNumber for Option<Duration> {
    fn from_number(n: u32, unit: Unit) -> Self {
        (n > 0).then(|| unit.duration(n))
    }
}

/// A field's type read from a text, None when unset and without a default.
pub trait FromText {
    fn from_text(text: Option<String>) -> Self;
}

impl FromText for Option<String> {
    fn from_text(text: Option<String>) -> Self {
        text
    }
}

impl FromText for String {
    fn from_text(text: Option<String>) -> Self {
        text.unwrap_or_default()
    }
}

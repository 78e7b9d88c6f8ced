//! Reading one setting: a whole number within its range, or its default; every error names
//! the setting. The bottom layer: every other layer may use it, it uses none.

use crate::error::{Error, Result};

/// Reads setting `name` through `lookup` as a whole number in `min..=max`; unset or empty
/// keeps `default`. Errors name the setting.
pub fn parse_u32(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32> {
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(default);
    }
    let value: u32 = raw.parse().map_err(|_| Error::Setting {
        name: name.into(),
        reason: format!("{raw:?} is not a whole number"),
    })?;
    check_range(name, value, min, max)?;
    Ok(value)
}

/// Fails with an error naming `name` unless `min <= value <= max`.
pub fn check_range(name: &str, value: u32, min: u32, max: u32) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::Setting {
            name: name.into(),
            reason: format!("{value} is out of range ({min} to {max})"),
        })
    }
}

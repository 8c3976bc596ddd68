//! The config's JSON, read by hand: each object's fields are asked for by name and type, a field
//! left unasked is refused as unknown, and every error names its field (`routes[1].match.path`).
//! A derived deserializer did the same at about a quarter of the module's size.

use super::ConfigError;
use crate::json::{Json, Object};
use std::cell::RefCell;

/// A field's JSON type as the reader takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Boolean,
    Integer,
    String,
    Strings,
    Object,
    Objects,
    /// One of these strings.
    Choice(Vec<&'static str>),
}

/// A field the reader asked for, by shape (`routes[].match.path`): what the Kong schema must name.
/// Only the schema check (`config::schema`) keeps a trace of them.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Asked {
    pub shape: String,
    pub kind: Kind,
    pub required: bool,
    /// `null` is taken for absent.
    pub nullable: bool,
    /// May also be `{"env": NAME}`.
    pub env: bool,
}

/// Where a read records the fields it asked for.
pub(super) type Trace = RefCell<Vec<Asked>>;

/// An unsigned integer type a field can be read as.
pub(super) trait Whole: TryFrom<u64> {
    const MAX: u64;
}

impl Whole for u8 {
    const MAX: u64 = u8::MAX as u64;
}

impl Whole for u32 {
    const MAX: u64 = u32::MAX as u64;
}

impl Whole for u64 {
    const MAX: u64 = u64::MAX;
}

/// A value given inline or named by an environment variable (Envoy passes those to the VM with
/// `vm_config.environment_variables.host_env_keys`).
pub(super) enum Source<T> {
    Inline(T),
    Env(String),
}

/// One JSON object of the config; absent objects read as empty, so every field takes its default.
pub(super) struct Fields<'a> {
    map: Option<&'a Object>,
    path: String,
    shape: String,
    asked: Vec<&'static str>,
    trace: Option<&'a Trace>,
}

impl<'a> Fields<'a> {
    pub(super) fn document(value: &'a Json, trace: Option<&'a Trace>) -> Result<Fields<'a>, ConfigError> {
        let map = value.as_object().ok_or_else(|| ConfigError::new("config", "must be an object"))?;
        Ok(Fields { map: Some(map), path: String::new(), shape: String::new(), asked: Vec::new(), trace })
    }

    /// The path of one of this object's fields, as errors name it.
    pub(super) fn at(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn ask(&mut self, name: &'static str, kind: Kind, required: bool, nullable: bool, env: bool) -> Option<&'a Json> {
        self.asked.push(name);
        if let Some(trace) = self.trace {
            trace.borrow_mut().push(Asked { shape: join(&self.shape, name), kind, required, nullable, env });
        }
        self.map.and_then(|map| map.get(name))
    }

    fn required(&mut self, name: &'static str, kind: Kind, env: bool) -> Result<&'a Json, ConfigError> {
        self.ask(name, kind, true, false, env).ok_or_else(|| ConfigError::new(self.at(name), "is required"))
    }

    /// A field that may be absent or `null`.
    fn optional(&mut self, name: &'static str, kind: Kind) -> Option<&'a Json> {
        self.ask(name, kind, false, true, false).filter(|value| !value.is_null())
    }

    fn wrong(&self, name: &str, what: &str) -> ConfigError {
        ConfigError::new(self.at(name), format!("must be {what}"))
    }

    pub(super) fn string_of(&self, name: &str, value: &Json) -> Result<String, ConfigError> {
        value.as_str().map(str::to_owned).ok_or_else(|| self.wrong(name, "a string"))
    }

    fn whole_of<T: Whole>(&self, name: &str, value: &Json) -> Result<T, ConfigError> {
        value
            .as_u64()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| self.wrong(name, &format!("a whole number from 0 to {}", T::MAX)))
    }

    fn bool_of(&self, name: &str, value: &Json) -> Result<bool, ConfigError> {
        value.as_bool().ok_or_else(|| self.wrong(name, "true or false"))
    }

    pub(super) fn strings_of(&self, name: &str, value: &Json) -> Result<Vec<String>, ConfigError> {
        let items = value.as_array().ok_or_else(|| self.wrong(name, "a list of strings"))?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(self.string_of(&format!("{name}[{i}]"), item)?);
        }
        Ok(out)
    }

    fn object_of(&self, name: &str, shape: String, value: &'a Json) -> Result<Fields<'a>, ConfigError> {
        let map = value.as_object().ok_or_else(|| self.wrong(name, "an object"))?;
        Ok(Fields { map: Some(map), path: self.at(name), shape, asked: Vec::new(), trace: self.trace })
    }

    fn choice_of<T: Copy>(&self, name: &str, options: &[(&str, T)], value: &Json) -> Result<T, ConfigError> {
        let text = value.as_str().unwrap_or_default();
        options.iter().find(|(option, _)| *option == text).map(|(_, choice)| *choice).ok_or_else(|| {
            let quoted: Vec<String> = options.iter().map(|(option, _)| format!("\"{option}\"")).collect();
            self.wrong(name, &format!("one of {}", quoted.join(", ")))
        })
    }

    pub(super) fn string(&mut self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.required(name, Kind::String, false)?;
        self.string_of(name, value)
    }

    pub(super) fn opt_string(&mut self, name: &'static str) -> Result<Option<String>, ConfigError> {
        self.optional(name, Kind::String).map(|value| self.string_of(name, value)).transpose()
    }

    pub(super) fn string_or(&mut self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        match self.ask(name, Kind::String, false, false, false) {
            Some(value) => self.string_of(name, value),
            None => Ok(default.to_owned()),
        }
    }

    /// Absent: the default; `null`: none (a setting turned off).
    pub(super) fn string_or_null(&mut self, name: &'static str, default: &str) -> Result<Option<String>, ConfigError> {
        match self.ask(name, Kind::String, false, true, false) {
            Some(Json::Null) => Ok(None),
            Some(value) => self.string_of(name, value).map(Some),
            None => Ok(Some(default.to_owned())),
        }
    }

    pub(super) fn whole<T: Whole>(&mut self, name: &'static str) -> Result<T, ConfigError> {
        let value = self.required(name, Kind::Integer, false)?;
        self.whole_of(name, value)
    }

    pub(super) fn opt_whole<T: Whole>(&mut self, name: &'static str) -> Result<Option<T>, ConfigError> {
        self.optional(name, Kind::Integer).map(|value| self.whole_of(name, value)).transpose()
    }

    pub(super) fn whole_or<T: Whole>(&mut self, name: &'static str, default: T) -> Result<T, ConfigError> {
        match self.ask(name, Kind::Integer, false, false, false) {
            Some(value) => self.whole_of(name, value),
            None => Ok(default),
        }
    }

    pub(super) fn bool_or(&mut self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.ask(name, Kind::Boolean, false, false, false) {
            Some(value) => self.bool_of(name, value),
            None => Ok(default),
        }
    }

    pub(super) fn opt_bool(&mut self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.optional(name, Kind::Boolean).map(|value| self.bool_of(name, value)).transpose()
    }

    pub(super) fn opt_strings(&mut self, name: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        self.optional(name, Kind::Strings).map(|value| self.strings_of(name, value)).transpose()
    }

    /// A list that is empty when absent.
    pub(super) fn strings(&mut self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        match self.ask(name, Kind::Strings, false, false, false) {
            Some(value) => self.strings_of(name, value),
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        name: &'static str,
        options: &'static [(&'static str, T)],
    ) -> Result<T, ConfigError> {
        let value = self.required(name, names(options), false)?;
        self.choice_of(name, options, value)
    }

    pub(super) fn choice_or<T: Copy>(
        &mut self,
        name: &'static str,
        options: &'static [(&'static str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        match self.ask(name, names(options), false, false, false) {
            Some(value) => self.choice_of(name, options, value),
            None => Ok(default),
        }
    }

    pub(super) fn object(&mut self, name: &'static str) -> Result<Fields<'a>, ConfigError> {
        let value = self.required(name, Kind::Object, false)?;
        self.object_of(name, join(&self.shape, name), value)
    }

    pub(super) fn opt_object(&mut self, name: &'static str) -> Result<Option<Fields<'a>>, ConfigError> {
        self.optional(name, Kind::Object).map(|value| self.object_of(name, join(&self.shape, name), value)).transpose()
    }

    /// An object whose fields all have defaults: absent, it reads as empty.
    pub(super) fn defaulted_object(&mut self, name: &'static str) -> Result<Fields<'a>, ConfigError> {
        let shape = join(&self.shape, name);
        match self.ask(name, Kind::Object, false, false, false) {
            Some(value) => self.object_of(name, shape, value),
            None => Ok(Fields { map: None, path: self.at(name), shape, asked: Vec::new(), trace: self.trace }),
        }
    }

    pub(super) fn objects(&mut self, name: &'static str) -> Result<Vec<Fields<'a>>, ConfigError> {
        let value = self.required(name, Kind::Objects, false)?;
        let items = value.as_array().ok_or_else(|| self.wrong(name, "a list of objects"))?;
        let shape = format!("{}[]", join(&self.shape, name));
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let map = item.as_object().ok_or_else(|| self.wrong(&format!("{name}[{i}]"), "an object"))?;
            let path = format!("{}[{i}]", self.at(name));
            // Each item's fields are traced once, from the first.
            let trace = self.trace.filter(|_| i == 0);
            out.push(Fields { map: Some(map), path, shape: shape.clone(), asked: Vec::new(), trace });
        }
        Ok(out)
    }

    /// A required value given inline (read by `inline`, as `kind`) or as `{"env": NAME}`.
    pub(super) fn inline_or_env<T>(
        &mut self,
        name: &'static str,
        kind: Kind,
        inline: impl FnOnce(&Self, &str, &Json) -> Result<T, ConfigError>,
    ) -> Result<Source<T>, ConfigError> {
        let value = self.required(name, kind, true)?;
        let Some(map) = value.as_object() else { return inline(self, name, value).map(Source::Inline) };
        match (map.get("env").and_then(Json::as_str), map.len()) {
            (Some(env), 1) if !env.is_empty() => Ok(Source::Env(env.to_owned())),
            _ => Err(self.wrong(name, "given inline or as {\"env\": NAME}")),
        }
    }

    /// Refuses the fields nobody asked for.
    pub(super) fn done(self) -> Result<(), ConfigError> {
        let unknown = self.map.and_then(|map| map.names().find(|key| !self.asked.contains(key)));
        match unknown {
            Some(key) => Err(ConfigError::new(join(&self.path, key), format!("unknown field `{key}`"))),
            None => Ok(()),
        }
    }
}

fn names<T>(options: &[(&'static str, T)]) -> Kind {
    Kind::Choice(options.iter().map(|(name, _)| *name).collect())
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

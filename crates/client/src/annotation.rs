//! Annotation-style listeners, as QMQ's `@QmqConsumer`: put
//! `#[qmq_client::consumer(subject = "...", group = "...")]` on an
//! `async fn(ReceivedMessage) -> HandleResult` anywhere in the program, then start every such
//! function with [`Consumer::subscribe_registered_with`] (or [`Consumer::subscribe_registered`]).
//! Registration happens at link time (through the `inventory` crate), so no list of handlers has
//! to be kept by hand.
//!
//! What QMQ's Spring integration takes from the application context comes here from a
//! [`ConsumerContext`] given when subscribing:
//!
//! - **placeholders**: `subject`, `group` and each tag may hold `${name}` placeholders
//!   (`"${order.subject}"`, `"orders.${env}"`, `"${name:default}"`), resolved from the context's
//!   configuration values, then from environment variables (see
//!   [`ConsumerContext::env_var_name`] for the mapping), then from the default after `:`;
//!   they may also name a `&str` constant (`subject = ORDER_SUBJECT`), whose value may hold
//!   placeholders too;
//! - **state**: a handler may take a second argument, a value of any `Clone + Send + Sync`
//!   type (typically an `Arc<AppState>`), registered in the context by its type with
//!   [`ConsumerContext::state`]; each message gets a clone;
//! - **idempotent checkers**: `idempotent = "name"` (QMQ's `idempotentChecker` bean name) wraps
//!   the handler in [`Idempotent`] with the checker registered under that name with
//!   [`ConsumerContext::checker`].
//!
//! Everything a registration needs is looked up before the first subscription starts: an
//! unresolved placeholder, a missing state type or checker is a [`RegistrationError`] (as
//! [`ConsumeError::Registration`]) naming the function, and nothing is subscribed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use qmq_client::annotation::ConsumerContext;
//! use qmq_client::{HandleResult, ReceivedMessage};
//!
//! struct Billing {
//!     currency: String,
//! }
//!
//! const ORDER_GROUP: &str = "billing";
//!
//! #[qmq_client::consumer(subject = "${order.subject}", group = ORDER_GROUP, tags = ["vip"])]
//! async fn on_order(message: ReceivedMessage, billing: Arc<Billing>) -> HandleResult {
//!     println!("order {} in {}", message.message_id, billing.currency);
//!     Ok(())
//! }
//!
//! # async fn demo(consumer: qmq_client::Consumer) -> Result<(), qmq_client::ConsumeError> {
//! let context = ConsumerContext::new()
//!     .config("order.subject", "order.created") // else the ORDER_SUBJECT environment variable
//!     .state(Arc::new(Billing { currency: "EUR".into() }));
//! let started = consumer.subscribe_registered_with(&context).await?;
//! # Ok(()) }
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use qmq_protocol::TagType;

use crate::consumer::{
    ConsumeError, Consumer, HandleResult, MessageHandler, ReceivedMessage, SubscribeOptions,
};
use crate::idempotent::{Idempotent, IdempotentChecker, IdempotentError};

/// Builds a registration's handler from the context: `Err` when the context lacks the state the
/// function takes. The `&str` is the registration's name, for the error.
pub type HandlerFactory =
    fn(&ConsumerContext, &'static str) -> Result<Arc<dyn MessageHandler>, RegistrationError>;

/// One `#[consumer]` function and its attributes (built by the macro, not by hand).
///
/// `subject`, `group` and `tags` are as written (placeholders unresolved); see
/// [`ConsumerRegistration::resolve`].
#[derive(Debug)]
pub struct ConsumerRegistration {
    /// `module::path::function`, for logs and errors.
    pub name: &'static str,
    /// The subject, possibly with `${...}` placeholders.
    pub subject: &'static str,
    /// The consumer group, possibly with `${...}` placeholders (empty: none, for broadcast).
    pub group: &'static str,
    /// Tag filter (empty: none), possibly with `${...}` placeholders.
    pub tags: &'static [&'static str],
    /// How `tags` combine.
    pub tag_type: TagType,
    /// Broadcast mode.
    pub broadcast: bool,
    /// At-most-once mode.
    pub consume_most_once: bool,
    /// The name of the idempotent checker to wrap the handler with, if any.
    pub idempotent: Option<&'static str>,
    /// Makes the handler: the function, given its state from the context.
    pub handler: HandlerFactory,
}

/// A registration with its placeholders resolved and its handler built, ready to subscribe.
pub struct ResolvedConsumer {
    /// The registration's `module::path::function`.
    pub name: &'static str,
    /// The subject.
    pub subject: String,
    /// The consumer group.
    pub group: String,
    /// Tags, tag type, broadcast and at-most-once.
    pub options: SubscribeOptions,
    /// The function (with its state, inside its idempotent checker if one was named).
    pub handler: Arc<dyn MessageHandler>,
}

impl fmt::Debug for ResolvedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedConsumer")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("group", &self.group)
            .field("tags", &self.options.tags)
            .finish_non_exhaustive()
    }
}

/// Why a `${...}` placeholder could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// No configuration value, no environment variable and no default.
    #[error(
        "placeholder ${{{name}}} is not set (no configuration value {name:?} in the context, \
         no environment variable {env_var}, no default)"
    )]
    Unset {
        /// The placeholder's name.
        name: String,
        /// The environment variable looked at.
        env_var: String,
    },
    /// `${` without its `}`, or `${}`.
    #[error("malformed placeholder in {0:?} (expected ${{name}} or ${{name:default}})")]
    Malformed(String),
}

/// Why a `#[consumer]` function could not be subscribed: each names the function.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A placeholder in its subject, group or a tag.
    #[error("#[consumer] {handler}: {source}")]
    Placeholder {
        /// The function (`module::path::function`).
        handler: &'static str,
        /// What is wrong with the placeholder.
        #[source]
        source: PlaceholderError,
    },
    /// Its subject, or its group (unless broadcast), is empty once resolved.
    #[error("#[consumer] {handler}: {what} is empty")]
    Empty {
        /// The function.
        handler: &'static str,
        /// `"subject"` or `"group"`.
        what: &'static str,
    },
    /// It takes state of a type the context has none of.
    #[error(
        "#[consumer] {handler}: no state of type {type_name} in the context \
         (register it with ConsumerContext::state)"
    )]
    MissingState {
        /// The function.
        handler: &'static str,
        /// The state's type, as the function takes it.
        type_name: &'static str,
    },
    /// It names an idempotent checker the context has not.
    #[error(
        "#[consumer] {handler}: no idempotent checker named {name:?} in the context \
         (register it with ConsumerContext::checker)"
    )]
    MissingChecker {
        /// The function.
        handler: &'static str,
        /// The checker's name.
        name: &'static str,
    },
}

/// What `#[consumer]` functions are subscribed with: configuration values for `${...}`
/// placeholders, shared state by type and idempotent checkers by name (QMQ takes these from the
/// Spring application context).
///
/// Placeholders are looked up in this order:
///
/// 1. the configuration values given with [`ConsumerContext::config`], by exact name;
/// 2. unless turned off with [`ConsumerContext::without_env`], the environment variable
///    [`ConsumerContext::env_var_name`] maps the name to: upper case, every character other
///    than an ASCII letter or digit turned into `_` (`order.subject` → `ORDER_SUBJECT`,
///    `kafka-bridge.group` → `KAFKA_BRIDGE_GROUP`, as Spring's relaxed binding reads it);
/// 3. the default after the first `:` (`${order.subject:order.created}`), if any.
#[derive(Default)]
pub struct ConsumerContext {
    config: HashMap<String, String>,
    no_env: bool,
    state: HashMap<TypeId, (&'static str, Box<dyn Any + Send + Sync>)>,
    checkers: HashMap<String, Arc<dyn IdempotentChecker>>,
}

impl fmt::Debug for ConsumerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut state: Vec<_> = self.state.values().map(|(name, _)| *name).collect();
        state.sort_unstable();
        let mut checkers: Vec<_> = self.checkers.keys().collect();
        checkers.sort_unstable();
        f.debug_struct("ConsumerContext")
            .field("config", &self.config)
            .field("env", &!self.no_env)
            .field("state", &state)
            .field("checkers", &checkers)
            .finish()
    }
}

impl ConsumerContext {
    /// An empty context: placeholders come from environment variables only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the configuration value `key` (what `${key}` resolves to).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Sets several configuration values (a loaded properties file, say).
    pub fn configs<K: Into<String>, V: Into<String>>(
        mut self,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.config
            .extend(values.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Stops looking placeholders up in environment variables.
    pub fn without_env(mut self) -> Self {
        self.no_env = true;
        self
    }

    /// Registers `value` as the state handlers of type `T` receive (each call a clone), replacing
    /// an earlier value of that type. Register exactly the type the function takes: for
    /// `state: Arc<AppState>`, an `Arc<AppState>`.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(
            TypeId::of::<T>(),
            (std::any::type_name::<T>(), Box::new(value)),
        );
        self
    }

    /// Registers `checker` under `name`, for `#[consumer(idempotent = "name")]`.
    pub fn checker(self, name: impl Into<String>, checker: impl IdempotentChecker) -> Self {
        self.shared_checker(name, Arc::new(checker))
    }

    /// Registers a checker already shared elsewhere under `name`.
    pub fn shared_checker(
        mut self,
        name: impl Into<String>,
        checker: Arc<dyn IdempotentChecker>,
    ) -> Self {
        self.checkers.insert(name.into(), checker);
        self
    }

    /// The state of type `T`, if registered.
    pub fn get_state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.state
            .get(&TypeId::of::<T>())?
            .1
            .downcast_ref::<T>()
            .cloned()
    }

    /// The checker registered under `name`.
    pub fn get_checker(&self, name: &str) -> Option<Arc<dyn IdempotentChecker>> {
        self.checkers.get(name).cloned()
    }

    /// The environment variable a placeholder name is looked up in: upper case, each character
    /// other than an ASCII letter or digit replaced by `_`.
    ///
    /// ```
    /// use qmq_client::annotation::ConsumerContext;
    /// assert_eq!(ConsumerContext::env_var_name("order.subject"), "ORDER_SUBJECT");
    /// assert_eq!(ConsumerContext::env_var_name("billing-app.group"), "BILLING_APP_GROUP");
    /// ```
    pub fn env_var_name(name: &str) -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// The value of placeholder `name` (without `${}` and default), if set.
    pub fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.config.get(name) {
            return Some(v.clone());
        }
        if self.no_env {
            return None;
        }
        std::env::var(Self::env_var_name(name)).ok()
    }

    /// `text` with each `${name}` / `${name:default}` replaced by its value.
    ///
    /// ```
    /// use qmq_client::annotation::ConsumerContext;
    /// let context = ConsumerContext::new().without_env().config("env", "beta");
    /// assert_eq!(context.resolve("orders.${env}").unwrap(), "orders.beta");
    /// assert_eq!(context.resolve("${region:eu}.orders").unwrap(), "eu.orders");
    /// assert!(context.resolve("${missing}").is_err());
    /// ```
    pub fn resolve(&self, text: &str) -> Result<String, PlaceholderError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| PlaceholderError::Malformed(text.to_owned()))?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(':') {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() {
                return Err(PlaceholderError::Malformed(text.to_owned()));
            }
            match self.lookup(name).or_else(|| default.map(str::to_owned)) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(PlaceholderError::Unset {
                        name: name.to_owned(),
                        env_var: Self::env_var_name(name),
                    })
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl ConsumerRegistration {
    /// The subscription options these attributes stand for, tags as written (placeholders
    /// unresolved); [`ConsumerRegistration::resolve`] gives them resolved.
    pub fn options(&self) -> SubscribeOptions {
        SubscribeOptions {
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            tag_type: Some(self.tag_type),
            broadcast: self.broadcast,
            consume_most_once: self.consume_most_once,
            filters: Vec::new(),
            new_group_start: Default::default(),
        }
    }

    /// Resolves the placeholders, fetches the state and the checker from `context` and builds
    /// the handler.
    pub fn resolve(
        &self,
        context: &ConsumerContext,
    ) -> Result<ResolvedConsumer, RegistrationError> {
        let resolve = |text: &str| {
            context
                .resolve(text)
                .map_err(|source| RegistrationError::Placeholder {
                    handler: self.name,
                    source,
                })
        };
        let subject = resolve(self.subject)?;
        if subject.is_empty() {
            return Err(RegistrationError::Empty {
                handler: self.name,
                what: "subject",
            });
        }
        let group = resolve(self.group)?;
        if group.is_empty() && !self.broadcast {
            return Err(RegistrationError::Empty {
                handler: self.name,
                what: "group",
            });
        }
        let mut options = self.options();
        options.tags = self
            .tags
            .iter()
            .map(|t| resolve(t))
            .collect::<Result<_, _>>()?;
        let mut handler = (self.handler)(context, self.name)?;
        if let Some(name) = self.idempotent {
            let checker = context
                .get_checker(name)
                .ok_or(RegistrationError::MissingChecker {
                    handler: self.name,
                    name,
                })?;
            let inner = handler;
            handler = Arc::new(Idempotent::new(
                SharedChecker(checker),
                move |m: ReceivedMessage| inner.handle(m),
            ));
        }
        Ok(ResolvedConsumer {
            name: self.name,
            subject,
            group,
            options,
            handler,
        })
    }
}

/// An `Arc<dyn IdempotentChecker>` as a checker of its own, for [`Idempotent::new`].
struct SharedChecker(Arc<dyn IdempotentChecker>);

impl IdempotentChecker for SharedChecker {
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotentError>> {
        self.0.claim(key)
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), IdempotentError>> {
        self.0.release(key)
    }
}

inventory::collect!(ConsumerRegistration);

/// Every `#[consumer]` function linked into the program.
pub fn registered() -> impl Iterator<Item = &'static ConsumerRegistration> {
    inventory::iter::<ConsumerRegistration>.into_iter()
}

impl Consumer {
    /// Subscribes every `#[consumer]` function of the program with an empty
    /// [`ConsumerContext`]: placeholders from environment variables only, no state, no
    /// checkers. Returns how many were subscribed.
    pub async fn subscribe_registered(&self) -> Result<usize, ConsumeError> {
        self.subscribe_registered_with(&ConsumerContext::new())
            .await
    }

    /// Subscribes every `#[consumer]` function of the program, with its placeholders, state and
    /// checker taken from `context`; returns how many. Every registration is resolved first:
    /// if one fails ([`ConsumeError::Registration`]), none is subscribed.
    pub async fn subscribe_registered_with(
        &self,
        context: &ConsumerContext,
    ) -> Result<usize, ConsumeError> {
        let resolved = registered()
            .map(|r| r.resolve(context))
            .collect::<Result<Vec<_>, _>>()?;
        let n = resolved.len();
        for r in resolved {
            tracing::info!(
                handler = r.name,
                subject = %r.subject,
                group = %r.group,
                "subscribing"
            );
            let handler = r.handler;
            self.subscribe_with(
                &r.subject,
                &r.group,
                move |m: ReceivedMessage| handler.handle(m),
                r.options,
            )
            .await?;
        }
        Ok(n)
    }
}

/// What the `#[consumer]` macro's expansion calls (not a public API).
#[doc(hidden)]
pub mod __macro {
    use super::*;

    /// A function taking the message only.
    pub fn plain(
        f: fn(ReceivedMessage) -> BoxFuture<'static, HandleResult>,
    ) -> Result<Arc<dyn MessageHandler>, RegistrationError> {
        Ok(Arc::new(f))
    }

    /// A function taking the message and state of type `S` from the context.
    pub fn with_state<S: Clone + Send + Sync + 'static>(
        context: &ConsumerContext,
        handler: &'static str,
        f: fn(ReceivedMessage, S) -> BoxFuture<'static, HandleResult>,
    ) -> Result<Arc<dyn MessageHandler>, RegistrationError> {
        let state = context
            .get_state::<S>()
            .ok_or(RegistrationError::MissingState {
                handler,
                type_name: std::any::type_name::<S>(),
            })?;
        Ok(Arc::new(move |m: ReceivedMessage| f(m, state.clone())))
    }
}

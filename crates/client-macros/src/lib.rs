//! `#[qmq_client::consumer(...)]`: QMQ's `@QmqConsumer` for Rust. Use it through `qmq_client`,
//! which re-exports it; see `qmq_client::annotation` for what it registers and how registered
//! listeners are started.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, ToTokens};
use syn::punctuated::Punctuated;
use syn::{
    parse_macro_input, Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, MetaNameValue, Pat, Token, Type,
};

/// Registers an async fn as a QMQ listener (QMQ's `@QmqConsumer`).
///
/// ```ignore
/// #[qmq_client::consumer(subject = "order.created", group = "billing")]
/// async fn on_order(message: ReceivedMessage) -> HandleResult { Ok(()) }
/// ```
///
/// The function stays callable as written; the macro adds a
/// `qmq_client::annotation::ConsumerRegistration` that `Consumer::subscribe_registered_with`
/// (or `Consumer::subscribe_registered`) resolves and subscribes.
///
/// # The function
///
/// `async fn name(message: ReceivedMessage) -> HandleResult`, or with shared state as a second
/// argument, `async fn name(message: ReceivedMessage, state: T) -> HandleResult`, where `T` is
/// any `Clone + Send + Sync + 'static` type registered in the `ConsumerContext` with
/// `.state(value)` (each message gets a clone; typically `Arc<AppState>`). No generics, no
/// `self`, no references.
///
/// # Attributes
///
/// Text values (`subject`, `group`, each tag, `idempotent`) are a string literal or the path of
/// a `&str` constant. Literals and constants (except `idempotent`) may hold `${name}` or
/// `${name:default}` placeholders, resolved when subscribing from the context's configuration
/// values, then environment variables (`order.subject` → `ORDER_SUBJECT`), then the default.
///
/// | attribute | example | meaning |
/// |---|---|---|
/// | `subject` (required) | `subject = "order.created"`, `subject = "${order.subject}"`, `subject = ORDER_SUBJECT` | the subject |
/// | `group` (required unless `broadcast`) | `group = "billing"`, `group = "billing.${env}"` | the consumer group (QMQ's `consumerGroup`) |
/// | `tags` | `tags = ["vip", "${region}", VIP_TAG]` | tag filter |
/// | `tag_type` | `tag_type = "and"` | how tags combine: `"or"` (default) or `"and"` |
/// | `broadcast` | `broadcast = true` | every consumer of the group gets every message |
/// | `consume_most_once` | `consume_most_once = true` | ack before handling: never twice, maybe never |
/// | `idempotent` | `idempotent = "dedup"` | wrap the handler in `idempotent::Idempotent` with the checker the context registered as `"dedup"` (QMQ's `idempotentChecker`) |
///
/// Mistakes are compile errors pointing at the offending token: an unknown or repeated
/// attribute, a value of the wrong kind, a malformed placeholder in a literal, a function that is
/// not `async` or takes other arguments. What only the context can tell (an unset placeholder,
/// missing state or checker) is an error when subscribing, naming the function.
#[proc_macro_attribute]
pub fn consumer(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args =
        parse_macro_input!(attr with Punctuated::<MetaNameValue, Token![,]>::parse_terminated);
    let func = parse_macro_input!(item as ItemFn);
    match expand(args, func) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// A text attribute: the tokens of its value and, for a literal, the literal.
struct Text {
    tokens: TokenStream2,
    literal: Option<LitStr>,
}

#[derive(Default)]
struct Args {
    subject: Option<Text>,
    group: Option<Text>,
    tags: Vec<Text>,
    tag_and: bool,
    broadcast: bool,
    consume_most_once: bool,
    idempotent: Option<Text>,
}

/// Checks the `${...}` placeholders of `s` (the same rules as `ConsumerContext::resolve`).
fn check_placeholders(s: &LitStr) -> syn::Result<()> {
    let value = s.value();
    let mut rest = value.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(syn::Error::new_spanned(
                s,
                "unterminated placeholder: expected ${name} or ${name:default}",
            ));
        };
        let name = after[..end].split(':').next().unwrap_or_default();
        if name.is_empty() {
            return Err(syn::Error::new_spanned(
                s,
                "empty placeholder name: expected ${name} or ${name:default}",
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// A string literal (checked for placeholders when `placeholders`) or a constant's path.
fn text(e: &Expr, placeholders: bool) -> syn::Result<Text> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            if placeholders {
                check_placeholders(s)?;
            }
            Ok(Text {
                tokens: s.to_token_stream(),
                literal: Some(s.clone()),
            })
        }
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Ok(Text {
            // The path's own tokens: a constant of another type is an error pointing at it.
            tokens: p.to_token_stream(),
            literal: None,
        }),
        other => Err(syn::Error::new_spanned(
            other,
            "expected a string literal or the path of a `&str` constant",
        )),
    }
}

fn boolean(e: &Expr) -> syn::Result<bool> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(other, "expected true or false")),
    }
}

const KNOWN: &str = "subject, group, tags, tag_type, broadcast, consume_most_once, idempotent";

fn parse_args(args: Punctuated<MetaNameValue, Token![,]>) -> syn::Result<Args> {
    let mut out = Args::default();
    let mut seen: Vec<String> = Vec::new();
    for nv in args {
        let name = nv
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if !name.is_empty() && seen.contains(&name) {
            return Err(syn::Error::new_spanned(
                &nv.path,
                format!("`{name}` is given twice"),
            ));
        }
        seen.push(name.clone());
        match name.as_str() {
            "subject" => out.subject = Some(text(&nv.value, true)?),
            "group" => out.group = Some(text(&nv.value, true)?),
            "tags" => match &nv.value {
                Expr::Array(a) => {
                    out.tags = a
                        .elems
                        .iter()
                        .map(|e| text(e, true))
                        .collect::<syn::Result<_>>()?;
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "expected [\"tag\", TAG_CONSTANT, ...]",
                    ))
                }
            },
            "tag_type" => {
                let Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) = &nv.value
                else {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "expected \"and\" or \"or\"",
                    ));
                };
                out.tag_and = match s.value().to_ascii_lowercase().as_str() {
                    "and" => true,
                    "or" => false,
                    _ => return Err(syn::Error::new_spanned(s, "expected \"and\" or \"or\"")),
                }
            }
            "broadcast" => out.broadcast = boolean(&nv.value)?,
            "consume_most_once" => out.consume_most_once = boolean(&nv.value)?,
            "idempotent" => {
                let t = text(&nv.value, false)?;
                if t.literal.as_ref().is_some_and(|l| l.value().is_empty()) {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "expected the name of an idempotent checker",
                    ));
                }
                out.idempotent = Some(t);
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    format!("unknown attribute (expected one of: {KNOWN})"),
                ))
            }
        }
    }
    Ok(out)
}

/// Checks the signature; returns the state argument's type, if any.
fn check_signature(func: &ItemFn) -> syn::Result<Option<Type>> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "a QMQ consumer must be an async fn",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a QMQ consumer cannot be generic",
        ));
    }
    let expected = "a QMQ consumer takes (message: qmq_client::ReceivedMessage) or \
                    (message: qmq_client::ReceivedMessage, state: T)";
    if sig.inputs.is_empty() {
        return Err(syn::Error::new(sig.paren_token.span.join(), expected));
    }
    let mut state = None;
    for (i, arg) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = arg else {
            return Err(syn::Error::new_spanned(arg, expected));
        };
        if i >= 2 {
            return Err(syn::Error::new_spanned(arg, expected));
        }
        if let Pat::Ident(p) = &*pt.pat {
            if p.by_ref.is_some() {
                return Err(syn::Error::new_spanned(
                    &pt.pat,
                    "take the argument by value",
                ));
            }
        }
        if i == 1 {
            match &*pt.ty {
                Type::Reference(_) => {
                    return Err(syn::Error::new_spanned(
                        &pt.ty,
                        "state is taken by value (each message gets a clone): use an owned \
                         type such as Arc<AppState>",
                    ))
                }
                Type::ImplTrait(_) | Type::Infer(_) => {
                    return Err(syn::Error::new_spanned(
                        &pt.ty,
                        "state needs a concrete type, registered in the ConsumerContext",
                    ))
                }
                ty => state = Some(ty.clone()),
            }
        }
    }
    Ok(state)
}

fn expand(args: Punctuated<MetaNameValue, Token![,]>, func: ItemFn) -> syn::Result<TokenStream2> {
    let args = parse_args(args)?;
    let subject = args
        .subject
        .ok_or_else(|| syn::Error::new(Span::call_site(), "`subject = \"...\"` is required"))?;
    if let Some(l) = subject.literal.as_ref().filter(|l| l.value().is_empty()) {
        return Err(syn::Error::new_spanned(l, "the subject is empty"));
    }
    let group = match args.group {
        Some(g) => {
            if let Some(l) = g.literal.as_ref().filter(|l| l.value().is_empty()) {
                if !args.broadcast {
                    return Err(syn::Error::new_spanned(
                        l,
                        "the group is empty (allowed only with broadcast = true)",
                    ));
                }
            }
            g.tokens
        }
        None if args.broadcast => quote!(""),
        None => {
            return Err(syn::Error::new(
                Span::call_site(),
                "`group = \"...\"` is required (unless broadcast = true)",
            ))
        }
    };
    let state = check_signature(&func)?;
    let subject = subject.tokens;
    let ident = &func.sig.ident;
    let tags = args.tags.iter().map(|t| &t.tokens);
    let tag_type = if args.tag_and {
        quote!(::qmq_client::TagType::And)
    } else {
        quote!(::qmq_client::TagType::Or)
    };
    let broadcast = args.broadcast;
    let most_once = args.consume_most_once;
    let idempotent = match &args.idempotent {
        Some(t) => {
            let t = &t.tokens;
            quote!(::core::option::Option::Some(#t))
        }
        None => quote!(::core::option::Option::None),
    };
    let factory = match &state {
        None => quote! {
            fn __qmq_call(
                message: ::qmq_client::ReceivedMessage,
            ) -> ::qmq_client::__private::BoxFuture<'static, ::qmq_client::HandleResult> {
                ::std::boxed::Box::pin(#ident(message))
            }
            ::qmq_client::annotation::__macro::plain(__qmq_call)
        },
        Some(ty) => quote! {
            fn __qmq_call(
                message: ::qmq_client::ReceivedMessage,
                state: #ty,
            ) -> ::qmq_client::__private::BoxFuture<'static, ::qmq_client::HandleResult> {
                ::std::boxed::Box::pin(#ident(message, state))
            }
            ::qmq_client::annotation::__macro::with_state::<#ty>(context, name, __qmq_call)
        },
    };
    Ok(quote! {
        #func

        ::qmq_client::__private::inventory::submit! {
            ::qmq_client::annotation::ConsumerRegistration {
                name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                subject: #subject,
                group: #group,
                tags: &[#(#tags),*],
                tag_type: #tag_type,
                broadcast: #broadcast,
                consume_most_once: #most_once,
                idempotent: #idempotent,
                handler: {
                    #[allow(unused_variables)]
                    fn __qmq_consumer_handler(
                        context: &::qmq_client::annotation::ConsumerContext,
                        name: &'static str,
                    ) -> ::core::result::Result<
                        ::std::sync::Arc<dyn ::qmq_client::MessageHandler>,
                        ::qmq_client::annotation::RegistrationError,
                    > {
                        #factory
                    }
                    __qmq_consumer_handler
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::spanned::Spanned;

    fn try_expand(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        let args = syn::parse::Parser::parse2(
            Punctuated::<MetaNameValue, Token![,]>::parse_terminated,
            attr,
        )
        .unwrap();
        let func: ItemFn = syn::parse2(item).unwrap();
        match expand(args, func) {
            Ok(t) => t.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn expands_to_a_registration() {
        let out = try_expand(
            quote!(subject = "s", group = "g", tags = ["a"], tag_type = "AND"),
            quote!(
                async fn h(m: ReceivedMessage) -> HandleResult {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("inventory :: submit"), "{out}");
        assert!(out.contains("TagType :: And"), "{out}");
        assert!(out.contains("Box :: pin (h (message))"), "{out}");
    }

    #[test]
    fn expands_placeholders_constants_state_and_checker() {
        let out = try_expand(
            quote!(
                subject = "orders.${env}",
                group = crate::GROUP,
                tags = ["${tag:vip}", TAG],
                idempotent = "dedup"
            ),
            quote!(
                async fn h(m: ReceivedMessage, state: Arc<AppState>) -> HandleResult {
                    Ok(())
                }
            ),
        );
        assert!(out.contains("subject : \"orders.${env}\""), "{out}");
        assert!(out.contains("group : crate :: GROUP"), "{out}");
        assert!(out.contains("tags : & [\"${tag:vip}\" , TAG]"), "{out}");
        assert!(out.contains("Some (\"dedup\")"), "{out}");
        assert!(out.contains("with_state :: < Arc < AppState > >"), "{out}");
        assert!(out.contains("Box :: pin (h (message , state))"), "{out}");
    }

    /// Errors keep the span of the offending token (not the whole attribute).
    #[test]
    fn errors_point_at_the_offending_token() {
        let attr: proc_macro2::TokenStream = "subject = \"s\", group = 7".parse().unwrap();
        let args = syn::parse::Parser::parse2(
            Punctuated::<MetaNameValue, Token![,]>::parse_terminated,
            attr,
        )
        .unwrap();
        let value_span = args[1].value.span();
        let func: ItemFn = syn::parse2(quote!(
            async fn h(m: ReceivedMessage) -> HandleResult {
                Ok(())
            }
        ))
        .unwrap();
        let err = expand(args, func).err().unwrap();
        assert_eq!(err.span().start().column, "subject = \"s\", group = ".len());
        assert_eq!(err.span().start(), value_span.start());
    }

    #[test]
    fn rejects_bad_usage() {
        let h = quote!(
            async fn h(m: ReceivedMessage) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(group = "g"), h.clone()).contains("subject"));
        assert!(try_expand(quote!(subject = "s"), h.clone()).contains("group"));
        assert!(
            !try_expand(quote!(subject = "s", broadcast = true), h.clone()).starts_with("error")
        );
        assert!(try_expand(
            quote!(subject = "s", group = "g", tag_type = "xor"),
            h.clone()
        )
        .contains("\"and\""));
        assert!(
            try_expand(quote!(subject = "s", group = "g", color = "red"), h.clone())
                .contains("unknown attribute")
        );
        assert!(try_expand(quote!(subject = 1, group = "g"), h.clone()).contains("string literal"));
        assert!(try_expand(quote!(subject = "", group = "g"), h.clone()).contains("empty"));
        assert!(try_expand(quote!(subject = "s", group = ""), h.clone()).contains("empty"));
        assert!(
            try_expand(quote!(subject = "s", group = "g", subject = "t"), h.clone())
                .contains("given twice")
        );
        assert!(try_expand(quote!(subject = "${a", group = "g"), h.clone())
            .contains("unterminated placeholder"));
        assert!(
            try_expand(quote!(subject = "s", group = "x.${}"), h.clone())
                .contains("empty placeholder")
        );
        assert!(try_expand(
            quote!(subject = "s", group = "g", tags = ["${:x}"]),
            h.clone()
        )
        .contains("empty placeholder"));
        assert!(try_expand(
            quote!(subject = "s", group = "g", idempotent = ""),
            h.clone()
        )
        .contains("idempotent checker"));
        assert!(
            try_expand(quote!(subject = "s", group = "g", idempotent = true), h)
                .contains("string literal")
        );
        let three = quote!(
            async fn h(m: ReceivedMessage, s: Arc<S>, t: u8) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), three).contains("takes"));
        let by_ref = quote!(
            async fn h(m: ReceivedMessage, s: &S) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), by_ref).contains("by value"));
        let generic = quote!(
            async fn h<T>(m: ReceivedMessage) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), generic).contains("generic"));
        let none = quote!(
            async fn h() -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), none).contains("takes"));
        let sync = quote!(
            fn h(m: ReceivedMessage) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), sync).contains("async"));
    }
}

//! `#[qmq_client::consumer(...)]`: QMQ's `@QmqConsumer` for Rust. Use it through `qmq_client`,
//! which re-exports it; see `qmq_client::annotation` for what it registers and how registered
//! listeners are started.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, Expr, ExprLit, ItemFn, Lit, MetaNameValue, Token};

/// Registers an `async fn(ReceivedMessage) -> HandleResult` as a listener.
///
/// Attributes: `subject = "..."` (required), `group = "..."` (required unless `broadcast`),
/// `tags = ["a", "b"]`, `tag_type = "and" | "or"` (default `"or"`), `broadcast = bool`,
/// `consume_most_once = bool`. The function stays callable as written; the macro adds a
/// `qmq_client::annotation::ConsumerRegistration` that
/// `Consumer::subscribe_registered` starts.
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

#[derive(Default)]
struct Args {
    subject: Option<String>,
    group: Option<String>,
    tags: Vec<String>,
    tag_and: bool,
    broadcast: bool,
    consume_most_once: bool,
}

fn string(e: &Expr) -> syn::Result<String> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
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

fn parse_args(args: Punctuated<MetaNameValue, Token![,]>) -> syn::Result<Args> {
    let mut out = Args::default();
    for nv in args {
        let name = nv
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "subject" => out.subject = Some(string(&nv.value)?),
            "group" => out.group = Some(string(&nv.value)?),
            "tags" => match &nv.value {
                Expr::Array(a) => {
                    out.tags = a.elems.iter().map(string).collect::<syn::Result<_>>()?;
                }
                other => return Err(syn::Error::new_spanned(other, "expected [\"tag\", ...]")),
            },
            "tag_type" => {
                out.tag_and = match string(&nv.value)?.to_ascii_lowercase().as_str() {
                    "and" => true,
                    "or" => false,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            &nv.value,
                            "expected \"and\" or \"or\"",
                        ))
                    }
                }
            }
            "broadcast" => out.broadcast = boolean(&nv.value)?,
            "consume_most_once" => out.consume_most_once = boolean(&nv.value)?,
            _ => return Err(syn::Error::new_spanned(
                &nv.path,
                "unknown attribute (subject, group, tags, tag_type, broadcast, consume_most_once)",
            )),
        }
    }
    Ok(out)
}

fn expand(
    args: Punctuated<MetaNameValue, Token![,]>,
    func: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let args = parse_args(args)?;
    let subject = args
        .subject
        .filter(|s| !s.is_empty())
        .ok_or_else(|| syn::Error::new(Span::call_site(), "`subject = \"...\"` is required"))?;
    let group = args.group.unwrap_or_default();
    if group.is_empty() && !args.broadcast {
        return Err(syn::Error::new(
            Span::call_site(),
            "`group = \"...\"` is required (unless broadcast = true)",
        ));
    }
    if func.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            func.sig.fn_token,
            "a QMQ consumer must be an async fn",
        ));
    }
    if func.sig.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &func.sig.inputs,
            "a QMQ consumer takes one argument: qmq_client::ReceivedMessage",
        ));
    }
    let ident = &func.sig.ident;
    let tags = &args.tags;
    let tag_type = if args.tag_and {
        quote!(::qmq_client::TagType::And)
    } else {
        quote!(::qmq_client::TagType::Or)
    };
    let broadcast = args.broadcast;
    let most_once = args.consume_most_once;
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
                handler: {
                    fn __qmq_consumer_handler(
                        message: ::qmq_client::ReceivedMessage,
                    ) -> ::qmq_client::__private::BoxFuture<'static, ::qmq_client::HandleResult> {
                        ::std::boxed::Box::pin(#ident(message))
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
        assert!(try_expand(quote!(subject = 1, group = "g"), h).contains("string literal"));
        let sync = quote!(
            fn h(m: ReceivedMessage) -> HandleResult {
                Ok(())
            }
        );
        assert!(try_expand(quote!(subject = "s", group = "g"), sync).contains("async"));
    }
}

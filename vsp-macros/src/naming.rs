//! Names derived from the user's: service names, generated type names, const names.

use proc_macro2::Ident;
use quote::format_ident;

/// `UserService` -> `user-service`, `HTTPGateway` -> `http-gateway`.
pub(crate) fn kebab_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_uppercase() && next_is_lower)
            {
                out.push('-');
            }
        }
        if c == '_' {
            out.push('-');
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `get_user` -> `GET_USER`, keeping the span.
pub(crate) fn const_name(method: &Ident) -> Ident {
    let unraw = method.to_string();
    let unraw = unraw.trim_start_matches("r#");
    Ident::new(&unraw.to_uppercase(), method.span())
}

/// `UserService` -> `UserServiceClient` (and `Server`), keeping the span.
pub(crate) fn suffixed(trait_name: &Ident, suffix: &str) -> Ident {
    format_ident!("{}{}", trait_name, suffix, span = trait_name.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_case_splits_words_and_acronyms() {
        assert_eq!(kebab_case("UserService"), "user-service");
        assert_eq!(kebab_case("HTTPGateway"), "http-gateway");
        assert_eq!(kebab_case("Orders2Api"), "orders2-api");
        assert_eq!(kebab_case("Echo"), "echo");
    }
}

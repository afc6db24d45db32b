//! The gateway's own HTML pages and their static assets.
//!
//! Pages work without JavaScript, carry no inline script or style, and are served with a CSP
//! that allows only this origin's stylesheet and script ([`CSP`]). Every value written into a
//! page goes through [`escape`].

use crate::store::SessionRecord;

/// The Content-Security-Policy of every page: nothing inline, nothing from elsewhere, no
/// framing, forms post only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// [`CSP`] with `form_action` (`'self'` and the redirect hosts' sources) as its `form-action`.
pub fn csp(form_action: &str) -> String {
    CSP.replace("form-action 'self'", &format!("form-action {form_action}"))
}

/// `/auth/static/portcullis.css`.
pub const STYLESHEET: &str = include_str!("static/portcullis.css");
/// `/auth/static/refresh.js`: submits the refresh form on load.
pub const REFRESH_SCRIPT: &str = include_str!("static/refresh.js");

/// HTML-escapes text for element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with the
// pages' own form POSTs, and the CSRF check (rightly) refuses those. The meta element overrides
// the `Referrer-Policy: no-referrer` header every gateway response carries; other origins still
// get no referrer.
fn layout(title: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} · Portcullis</title>
<link rel="stylesheet" href="/auth/static/portcullis.css">
</head>
<body>
<main class="card">
<p class="brand" aria-hidden="true">Portcullis</p>
{main}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

/// What the login form shows.
#[derive(Debug, Default)]
pub struct LoginForm<'a> {
    /// The CSRF token to repeat.
    pub csrf: &'a str,
    /// Where to go afterwards (already checked or not: it is checked again on POST).
    pub return_to: Option<&'a str>,
    /// The username to fill in again after a failure.
    pub username: Option<&'a str>,
    /// A message for the user (never says whether the user exists).
    pub error: Option<&'a str>,
    /// "Sign in with …" links, one per OpenID Provider.
    pub providers: &'a [ProviderButton],
    /// No users file: no username and password form.
    pub no_password: bool,
}

/// A "Sign in with <name>" link of the login page.
#[derive(Debug)]
pub struct ProviderButton {
    /// `/auth/oidc/<id>?return_to=…`.
    pub href: String,
    /// The provider's display name.
    pub name: String,
}

/// `GET /auth/login`.
pub fn login(form: &LoginForm<'_>) -> String {
    let error = form
        .error
        .map(|e| {
            format!(
                r#"<p class="error" role="alert" id="login-error">{}</p>"#,
                escape(e)
            )
        })
        .unwrap_or_default();
    let described = if form.error.is_some() {
        r#" aria-describedby="login-error""#
    } else {
        ""
    };
    let providers: String = form
        .providers
        .iter()
        .map(|p| {
            format!(
                r#"<a class="button provider" href="{}">Sign in with {}</a>
"#,
                escape(&p.href),
                escape(&p.name)
            )
        })
        .collect();
    let password = if form.no_password {
        String::new()
    } else {
        format!(
            r#"<form method="post" action="/auth/login" class="stack">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="return_to" value="{return_to}">
<label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" autocapitalize="none" spellcheck="false" required autofocus maxlength="256" value="{username}"{described}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024"{described}>
<label class="check"><input type="checkbox" name="remember_me" value="1"> Keep me signed in on this device</label>
<button type="submit">Sign in</button>
</form>"#,
            csrf = escape(form.csrf),
            return_to = escape(form.return_to.unwrap_or("")),
            username = escape(form.username.unwrap_or("")),
        )
    };
    // The providers' buttons first, then, when there is one, the password form below an "or".
    let providers = if providers.is_empty() {
        providers
    } else if form.no_password {
        format!("<div class=\"stack providers\">\n{providers}</div>\n")
    } else {
        format!(
            "<div class=\"stack providers\">\n{providers}</div>\n<p class=\"or\"><span>or</span></p>\n"
        )
    };
    let main = format!("<h1>Sign in</h1>\n{error}{providers}{password}");
    layout("Sign in", &main)
}

/// The page a browser with an expired access token and a refresh cookie sees for a moment: a
/// same-origin POST form to `/auth/refresh` that `refresh.js` submits at once (a button
/// without JavaScript). Reading the page changes nothing; only the POST does.
pub fn refresh(csrf: &str, return_to: &str) -> String {
    let main = format!(
        r#"<h1>Signing you back in…</h1>
<form method="post" action="/auth/refresh" id="refresh-form" class="stack">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="return_to" value="{return_to}">
<button type="submit">Continue</button>
</form>
<script src="/auth/static/refresh.js"></script>"#,
        csrf = escape(csrf),
        return_to = escape(return_to),
    );
    layout("Signing in", &main)
}

/// One row of the sessions page.
#[derive(Debug)]
pub struct SessionRow<'a> {
    /// The session.
    pub record: &'a SessionRecord,
    /// It is the session of this request.
    pub current: bool,
    /// The display name of the OpenID Provider it was signed in through, if any.
    pub provider: Option<&'a str>,
}

/// `GET /auth/sessions`.
pub fn sessions(display_name: &str, rows: &[SessionRow<'_>], csrf: &str) -> String {
    let mut list = String::new();
    for row in rows {
        let r = row.record;
        let marker = if row.current {
            r#" <span class="badge">This device</span>"#
        } else {
            ""
        };
        let action = if row.current {
            format!(
                r#"<form method="post" action="/auth/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary">Log out</button></form>"#,
                csrf = escape(csrf)
            )
        } else {
            format!(
                r#"<form method="post" action="/auth/sessions/revoke"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="session" value="{id}"><button type="submit" class="secondary" aria-label="Revoke the session of {device}">Revoke</button></form>"#,
                csrf = escape(csrf),
                id = escape(&r.id),
                device = escape(&device(&r.user_agent)),
            )
        };
        list.push_str(&format!(
            r#"<li class="session{cls}" data-session="{id}">
<div><strong>{device}</strong>{marker}
<dl><dt>IP address</dt><dd>{ip}</dd>{via}<dt>Signed in</dt><dd><time>{created}</time></dd><dt>Last active</dt><dd><time>{seen}</time></dd></dl></div>
{action}
</li>
"#,
            cls = if row.current { " current" } else { "" },
            id = escape(&r.id),
            device = escape(&device(&r.user_agent)),
            ip = escape(&r.ip),
            via = row
                .provider
                .map(|p| format!("<dt>Signed in with</dt><dd>{}</dd>", escape(p)))
                .unwrap_or_default(),
            created = when(r.created_at),
            seen = when(r.last_seen),
        ));
    }
    let main = format!(
        r#"<h1>Your sessions</h1>
<p>Signed in as <strong>{name}</strong>. These devices are signed in to your account.</p>
<ul class="sessions">
{list}</ul>
<form method="post" action="/auth/logout-all" class="stack">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit" class="danger">Log out everywhere</button>
</form>"#,
        name = escape(display_name),
        csrf = escape(csrf),
    );
    layout("Your sessions", &main)
}

/// A time on the sessions page: `2026-11-28 03:04:05 UTC`.
fn when(secs: i64) -> String {
    crate::audit::rfc3339(secs, 0)
        .replacen('T', " ", 1)
        .replace(".000Z", " UTC")
}

/// A short page for outcomes without a better place to go (a refused request on a form).
pub fn message(title: &str, text: &str) -> String {
    let main = format!(
        r#"<h1>{}</h1>
<p>{}</p>
<p><a href="/auth/login">Sign in</a></p>"#,
        escape(title),
        escape(text)
    );
    layout(title, &main)
}

/// After a logout of a session signed in through an OpenID Provider: signed out here, and a
/// link to sign out at the provider too (RP-initiated logout). A link rather than a redirect
/// from the logout POST: the pages' CSP `form-action` would block a redirect to the provider.
pub fn signed_out_with_provider(provider: &str, end_session: &str) -> String {
    let main = format!(
        r#"<h1>Signed out</h1>
<p>You are signed out of this site. You may still be signed in at {provider}.</p>
<p><a class="button" id="provider-logout" href="{href}">Sign out at {provider} too</a></p>
<p><a href="/auth/login">Sign in again</a></p>"#,
        provider = escape(provider),
        href = escape(end_session),
    );
    layout("Signed out", &main)
}

/// A human name for a user agent: browser and platform, or the first product token.
pub fn device(user_agent: &str) -> String {
    let ua = user_agent;
    let browser = if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("OPR/") {
        "Opera"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else {
        ""
    };
    let platform = if ua.contains("Android") {
        "Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        "iOS"
    } else if ua.contains("Windows") {
        "Windows"
    } else if ua.contains("Mac OS X") || ua.contains("Macintosh") {
        "macOS"
    } else if ua.contains("CrOS") {
        "ChromeOS"
    } else if ua.contains("Linux") {
        "Linux"
    } else {
        ""
    };
    match (browser, platform) {
        ("", "") => {
            let product = ua.split([' ', '/']).next().unwrap_or("").trim();
            if product.is_empty() {
                "Unknown device".to_owned()
            } else {
                product.chars().take(40).collect()
            }
        }
        (b, "") => b.to_owned(),
        ("", p) => p.to_owned(),
        (b, p) => format!("{b} on {p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = login(&LoginForm {
            csrf: "c",
            return_to: Some("/\"><script>x</script>"),
            username: Some("<b>"),
            error: None,
            providers: &[ProviderButton {
                href: "/auth/oidc/x?return_to=%22".into(),
                name: "<i>Corp</i>".into(),
            }],
            no_password: false,
        });
        assert!(!html.contains("<script>x"));
        assert!(html.contains("&lt;b&gt;"));
        assert!(html.contains("Sign in with &lt;i&gt;Corp&lt;/i&gt;"));
    }

    #[test]
    fn provider_buttons_come_first_and_an_or_stands_before_the_password_form_only() {
        let button = [ProviderButton {
            href: "/auth/oidc/acme".into(),
            name: "Acme".into(),
        }];
        let both = login(&LoginForm {
            providers: &button,
            ..LoginForm::default()
        });
        let (providers, or, form) = (
            both.find("Sign in with Acme").unwrap(),
            both.find(r#"class="or""#).unwrap(),
            both.find(r#"action="/auth/login""#).unwrap(),
        );
        assert!(providers < or && or < form, "{both}");
        let alone = login(&LoginForm {
            providers: &button,
            no_password: true,
            ..LoginForm::default()
        });
        assert!(alone.contains("Sign in with Acme") && !alone.contains(r#"class="or""#));
        assert!(!login(&LoginForm::default()).contains(r#"class="or""#));
    }

    #[test]
    fn pages_have_no_inline_script_or_style() {
        for html in [
            login(&LoginForm::default()),
            refresh("c", "/"),
            message("t", "m"),
        ] {
            assert!(!html.contains("<script>"), "inline script");
            assert!(!html.contains("style="), "inline style");
            assert!(!html.contains("<style"), "inline style");
        }
    }

    #[test]
    fn session_times_read_utc_not_u_c() {
        assert_eq!(when(1_795_835_045), "2026-11-28 03:04:05 UTC");
    }

    #[test]
    fn pages_keep_the_origin_on_their_own_form_posts() {
        // Regression: `<meta name="referrer" content="no-referrer">` made Chromium send
        // `Origin: null` with the login form's POST, which the CSRF check refused.
        let html = login(&LoginForm::default());
        assert!(html.contains(r#"<meta name="referrer" content="same-origin">"#));
        assert!(!html.contains("no-referrer"));
    }

    #[test]
    fn devices_are_named_from_the_user_agent() {
        assert_eq!(
            device(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
            ),
            "Chrome on Linux"
        );
        assert_eq!(
            device(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1"
            ),
            "Safari on iOS"
        );
        assert_eq!(device("curl/8.5.0"), "curl");
        assert_eq!(device(""), "Unknown device");
    }
}

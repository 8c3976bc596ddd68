//! A route with `browser`: the HTML 402 page for a client that prefers it, and with the cookie, the
//! redemption of a paid invoice into the cookie, and the cookie read as the credential and removed
//! before the upstream.

use super::host::{self, Host};
use super::http::{header, Http};
use crate::browser::page::{Page, Redeem};
use crate::browser::{accept, cookie, redeem};
use crate::config::{Browser, Cookie, Service};
use crate::gate::{self, Decision, Presented, Refusal, Routing};
use crate::l402::header::is_l402_authorization;
use crate::l402::VerifyError;
use crate::metrics::Counter;
use crate::outcome::{Outcome, Record};
use crate::response::{self, LocalResponse};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// What the cookie flow keeps of a request.
#[derive(Default)]
pub(super) struct BrowserState {
    /// The resource's target as the client sent it: the page's form posts back to it.
    target: Option<String>,
    /// The `Cookie` header without the credential's cookie, for the upstream.
    cookie_rest: Option<String>,
}

/// The route's cookie settings, where it redeems payments into cookies.
fn cookie_of(service: &Service) -> Option<&Cookie> {
    service.browser.as_ref()?.cookie.as_ref()
}

impl Http {
    /// Whether this request's origin is one where a browser keeps `Secure` cookies (read lazily: the
    /// scheme settles it for most requests).
    fn secure_origin(&self) -> bool {
        let scheme = header(":scheme");
        if cookie::secure_origin(scheme.as_deref(), None, "") {
            return true;
        }
        let host = self.client_host().unwrap_or_default();
        cookie::secure_origin(None, header("x-forwarded-proto").as_deref(), &host)
    }

    /// On a route with the cookie: the credential the cookie carries, as an `Authorization` value.
    /// The cookie is removed before the upstream whichever credential opens the route.
    /// A `Secure` cookie that came over plain HTTP is removed and not read: no browser sends one.
    pub(super) fn cookie_credential(&mut self, service: &Service, target: &str) -> Option<String> {
        let settings = cookie_of(service)?;
        self.browser.target = Some(target.to_owned());
        let header = header("cookie")?;
        let value = cookie::find(&header, &settings.name)?;
        self.browser.cookie_rest = Some(cookie::without(&header, &settings.name));
        (!settings.secure || self.secure_origin()).then(|| format!("L402 {value}"))
    }

    /// The upstream gets the `Cookie` header without the credential's cookie.
    pub(super) fn strip_cookie(&self) {
        match self.browser.cookie_rest.as_deref() {
            Some("") if self.host == Host::Envoy => host::remove_request_header("cookie"),
            Some(rest) => host::set_request_header("cookie", rest),
            None => {}
        }
    }

    /// The 402 for a route with `browser`: the page where the client prefers HTML, JSON otherwise;
    /// either varies with `Accept`.
    pub(super) fn browser_challenge(
        &self,
        browser: &Browser,
        offer: &response::Offer<'_>,
        refusal: Option<&Refusal>,
    ) -> LocalResponse {
        let config = &self.shared.config;
        let mut reply = if header("accept").is_some_and(|accept| accept::prefers_html(&accept)) {
            let memo = config.memo_for(offer.service);
            let action = self.browser.target.as_deref().map(redeem::action);
            let redeem = match (&browser.cookie, offer.macaroon_b64, &action) {
                (Some(_), Some(macaroon), Some(action)) => Some(Redeem { action, macaroon }),
                _ => None,
            };
            let page = Page {
                service: offer.service,
                memo: &memo,
                price_msat: offer.price_msat,
                invoice: offer.invoice,
                expiry_s: offer.expiry_s,
                refusal: refusal.map(Refusal::to_string),
                redeem,
            };
            response::payment_page(config, offer, &page, refusal)
        } else {
            response::payment_required(config, offer, refusal)
        };
        reply.headers.push(("vary", "Accept".to_owned()));
        reply
    }

    /// A POST with the reserved parameter, on a route whose GET redeems into a cookie: its
    /// `Authorization` is verified exactly as a paid request's, and the answer is 303 back to the
    /// resource with the cookie, or 403 with the reason. `None` for any other request, which goes
    /// its usual way. Nothing of it reaches the upstream, and it spends none of the token's uses.
    pub(super) fn redeem(&mut self, target: &str, authority: &str) -> Option<Action> {
        let resource = redeem::resource(target)?;
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let Routing::Paid(paid) = gate::route(config, "GET", &resource, authority) else { return None };
        let settings = cookie_of(paid.service)?;
        // In a dry run every request goes upstream, this one too.
        if paid.service.dry_run {
            return None;
        }
        let service = paid.service;
        let refused = |reason| Record::new(Outcome::Refused).reason(reason).service(&service.name, service.price_msat);
        // A browser names the site whose page posts: another site's would plant its token here.
        // And a Secure cookie set over plain HTTP would never come back: say so instead.
        let before = if header("sec-fetch-site").is_some_and(|site| site != "same-origin") {
            Some((Counter::CrossSiteRedemption, "cross_site", "a payment is redeemed only from this site's own page"))
        } else if settings.secure && !self.secure_origin() {
            Some((
                Counter::InsecureOriginRedemption,
                "insecure_origin",
                "the cookie is Secure and this request came over plain HTTP: serve the route over HTTPS (browser.cookie_secure: false is for plain-HTTP development only)",
            ))
        } else {
            None
        };
        if let Some((counter, reason, detail)) = before {
            shared.count(counter);
            self.decided(&refused(reason));
            self.respond(&response::redemption_refused(reason, detail));
            return Some(Action::Pause);
        }
        let authorization = host::request_header("authorization").ok().flatten().filter(|a| is_l402_authorization(a));
        let now = host::now_unix();
        let presented = Presented { authorization: authorization.as_deref(), macaroon: None, now };
        let decision = gate::decide_paid(config, &mut shared.cache.borrow_mut(), &paid, "GET", &presented);
        let refusal = match decision {
            Decision::Paid { identifier, .. } if shared.is_revoked_in_fleet(&identifier.token_id) => Refusal::Revoked,
            Decision::Paid { identifier, valid_until, .. } => {
                let credential =
                    authorization.as_deref().and_then(|a| a.trim_start().split_once(' ')).map(|(_, c)| c.trim());
                match credential.filter(|c| cookie::is_cookie_value(c)) {
                    Some(credential) => {
                        shared.count(Counter::CookiesIssued);
                        let record = Record::new(Outcome::Redeemed).service(&service.name, service.price_msat);
                        self.decided(&record.token(&identifier.token_id));
                        let max_age = valid_until.map(|until| until.saturating_sub(now));
                        let set_cookie = cookie::set_cookie(settings, credential, max_age);
                        self.respond(&response::redeemed(&redeem::same_origin(&resource), set_cookie));
                        return Some(Action::Pause);
                    }
                    None => Refusal::Token(VerifyError::Malformed("the credential cannot be a cookie")),
                }
            }
            Decision::Challenge { refusal: Some(refusal), .. } => refusal,
            _ => Refusal::Token(VerifyError::Malformed("no L402 credential to redeem")),
        };
        shared.count(Counter::for_refusal(Some(&refusal)));
        self.decided(&refused(refusal.code()));
        self.respond(&response::redemption_refused(refusal.code(), &refusal.to_string()));
        Some(Action::Pause)
    }
}

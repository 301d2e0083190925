//! Switches that make the sandbox behave like the awkward servers the bridge
//! meets, settable by a test at any time (`fhir.store.quirks.descending(true)`).
//! All are off by default: the sandbox then answers as it always has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Quirks {
    descending: AtomicBool,
    expire_next_links: AtomicBool,
    /// The next page link followed answers 410 once (`expire_next_link_once`).
    expire_once: AtomicBool,
    strict_params: AtomicBool,
    date_only: AtomicBool,
    hapi_history: AtomicBool,
    /// Bumped by `expire_page_links`: a page link from an older generation is stale.
    link_generation: AtomicU64,
}

impl Quirks {
    /// Searches ignore `_sort` and return the newest first (as Cerner does),
    /// and history lists newest first (as the FHIR spec has it). A search's
    /// page chain keeps the order it started with.
    pub fn descending(&self, on: bool) {
        self.descending.store(on, Ordering::Relaxed);
    }

    pub fn is_descending(&self) -> bool {
        self.descending.load(Ordering::Relaxed)
    }

    /// While on, following any page link (`next` of a search or a history)
    /// answers 410 Gone with an OperationOutcome: the server's cursors expire
    /// before the client comes back. First pages still work.
    pub fn expire_next_links(&self, on: bool) {
        self.expire_next_links.store(on, Ordering::Relaxed);
    }

    /// The next page link a client follows answers 410 Gone, once: a page
    /// context that expired in the middle of one walk (HAPI forgets a search
    /// after an hour).
    pub fn expire_next_link_once(&self) {
        self.expire_once.store(true, Ordering::Relaxed);
    }

    /// Every page link issued so far answers 410 Gone from now on; links
    /// issued afterwards work. The deterministic way to break a chain mid-walk.
    pub fn expire_page_links(&self) {
        self.link_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// With `Prefer: handling=strict`, an unknown search parameter is a 400
    /// OperationOutcome. Off, or without that header, unknown ones are ignored.
    pub fn strict_params(&self, on: bool) {
        self.strict_params.store(on, Ordering::Relaxed);
    }

    pub fn is_strict_params(&self) -> bool {
        self.strict_params.load(Ordering::Relaxed)
    }

    /// Bundles carry no `meta.lastUpdated`: the only server time is the HTTP
    /// `Date` header, to the second.
    pub fn date_only(&self, on: bool) {
        self.date_only.store(on, Ordering::Relaxed);
    }

    pub fn is_date_only(&self) -> bool {
        self.date_only.load(Ordering::Relaxed)
    }

    /// History shaped as HAPI FHIR serves it: newest first, and a DELETE
    /// entry (`request.url` `Type/id/_history/n`, `response.status`
    /// "200 OK", an `etag`, no resource) carries no `response.lastModified`.
    pub fn hapi_history(&self, on: bool) {
        self.hapi_history.store(on, Ordering::Relaxed);
    }

    pub fn is_hapi_history(&self) -> bool {
        self.hapi_history.load(Ordering::Relaxed)
    }

    /// The generation new page links carry.
    pub(super) fn link_generation(&self) -> u64 {
        self.link_generation.load(Ordering::Relaxed)
    }

    /// Whether a page link issued in `generation` must answer 410.
    pub(super) fn link_is_stale(&self, generation: u64) -> bool {
        self.expire_next_links.load(Ordering::Relaxed)
            || generation != self.link_generation()
            || self.expire_once.swap(false, Ordering::Relaxed)
    }
}

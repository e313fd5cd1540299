//! Pipelined pulls (decision 0012): while one page lands, the next is already asked for.
//!
//! A round is sequential: the responder cuts and encodes a page while this node waits, then
//! this node applies and persists it while the responder idles. When a round ships nothing
//! and nothing is owed outbound, the next request needs only the watermarks this node will
//! hold once the page has landed: the page is a per-origin contiguous cut (SPEC §4), so for
//! each origin node they are its highest version in the page. [`Rounds`] sends that request
//! before landing the page, so the responder's work on page k+1 overlaps this node's work on
//! page k.
//!
//! Why it is safe, rule by rule:
//!
//! * Only pull-only rounds are pipelined: the round whose response prompts it shipped
//!   nothing and owes nothing outbound, and the last round that landed had no failure.
//!   A pipelined request ships nothing, so the responder's state never depends on it.
//! * **Contiguous prefix.** The response to a pipelined request may advance own[origin] only
//!   where the request asked from exactly the own[origin] persisted after the previous page.
//!   Where that page stopped at a failure of the origin node, its items in the pipelined
//!   page still apply under last-write-wins, but the watermark stays behind the gap
//!   ([`RoundReport::held_back`]), and the next, normal, round delivers them again.
//! * The peer watermarks are replaced by each round's coverage report, landings run one
//!   after the other in round order, and each persists before the next starts.
//! * A pipelined request that fails is discarded and a normal round asks again; one whose
//!   previous page failed to land as a whole is dropped unread.
//! * A pipelined round reads no outbound side, so the channel is idle only after a normal
//!   round says neither side has more, and at most 32 pipelined rounds run in a row (a
//!   local write waits at most that many pages to ship).

use std::{future::Future, task::Poll};

use futures_util::future::{self, poll_fn, BoxFuture};
use sync_protocol::{ExchangeRequest, ExchangeResponse, PROTOCOL_VERSION};

use crate::{
    round::{lock, Outgoing},
    Error, ExchangeError, Requester, RoundReport,
};

type Pending = BoxFuture<'static, Result<ExchangeResponse, ExchangeError>>;

/// Most pipelined rounds in a row: then a normal round reads the outbound side, so a local
/// write made during a long download waits at most this many pages to ship.
const MAX_RUN: usize = 32;

/// Successive rounds of one requester, with pipelined pulls when
/// [`RoundConfig::pipelined_pulls`](crate::RoundConfig::pipelined_pulls) is on. Dropping it
/// drops a request still in flight (harmless: it shipped nothing).
pub struct Rounds<'a> {
    requester: &'a Requester,
    in_flight: Option<(Outgoing, Pending)>,
    /// The last round that landed left nothing behind: no failure, refusal or gap.
    clean: bool,
    /// Pipelined rounds since the last normal one.
    run: usize,
}

impl Requester {
    /// Rounds one after the other, the next page asked for while the previous one lands
    /// when that is safe (see [`Rounds`]).
    pub fn rounds(&self) -> Rounds<'_> {
        Rounds {
            requester: self,
            in_flight: None,
            clean: true,
            run: 0,
        }
    }
}

/// A normal round's request, sent.
async fn send(requester: &Requester) -> Result<(Outgoing, ExchangeResponse), Error> {
    let (outgoing, request) = requester.prepare().await?;
    let response = requester.parts().transport.exchange(request).await?;
    Ok((outgoing, response))
}

fn nothing_left_behind(report: &RoundReport) -> bool {
    report.failures.is_empty()
        && report.halted_by_peer.is_empty()
        && report.peer_refusals.is_empty()
        && report.outbound_blocked.is_none()
        && report.held_back.is_empty()
}

impl Rounds<'_> {
    /// The next round. A round whose report says [`pipelined`](RoundReport::pipelined)
    /// did not read the outbound side: the channel is idle only after a round that is not
    /// pipelined reports no more work.
    pub async fn next_round(&mut self) -> Result<RoundReport, Error> {
        let requester = self.requester;
        let (outgoing, response) = match self.in_flight.take() {
            Some((outgoing, pending)) => match pending.await {
                Ok(response) => (outgoing, response),
                Err(e) => {
                    // It changed nothing anywhere; a normal round asks again.
                    tracing::debug!(error = %e, "pipelined pull failed; asking again");
                    send(requester).await?
                }
            },
            None => send(requester).await?,
        };
        self.run = if outgoing.report.pipelined {
            self.run + 1
        } else {
            0
        };
        let Some((next, request)) = self.pipelined_request(&outgoing, &response) else {
            let report = requester.land(outgoing, response).await?;
            self.clean = nothing_left_behind(&report);
            return Ok(report);
        };
        let transport = requester.parts().transport.clone();
        let mut pending: Pending = Box::pin(async move { transport.exchange(request).await });
        let mut answered = None;
        let landing = requester.land(outgoing, response);
        futures_util::pin_mut!(landing);
        // The request goes out first, then both make progress until the page has landed.
        let report = poll_fn(|cx| {
            if answered.is_none() {
                if let Poll::Ready(r) = pending.as_mut().poll(cx) {
                    answered = Some(r);
                }
            }
            landing.as_mut().poll(cx)
        })
        .await;
        // A page that failed to land takes the pipelined request with it, unread.
        let report = report?;
        self.clean = nothing_left_behind(&report);
        let pending = match answered {
            Some(r) => Box::pin(future::ready(r)),
            None => pending,
        };
        self.in_flight = Some((next, pending));
        Ok(report)
    }

    /// The next round's request, if it may go out before this response has landed: a
    /// pull that asks from the watermarks this node holds once the page has landed whole.
    fn pipelined_request(
        &self,
        outgoing: &Outgoing,
        response: &ExchangeResponse,
    ) -> Option<(Outgoing, ExchangeRequest)> {
        let parts = self.requester.parts();
        let sent = &outgoing.report;
        let pull_only = sent.shipped == 0
            && !sent.outbound_has_more
            && sent.outbound_blocked.is_none()
            && sent.failures.is_empty();
        let page_empty = response.records.is_empty() && response.app_syncable_rows.is_empty();
        if !parts.config.pipelined_pulls
            || self.run >= MAX_RUN
            || !self.clean
            || !pull_only
            || !response.has_more
            || page_empty
            || !response.halted_authors.is_empty()
            || !response.refusals.is_empty()
        {
            return None;
        }
        // Per origin node, the highest version of the page: the page is each origin node's
        // lowest versions above what was asked (a contiguous cut), so once it has landed
        // whole, this is own[origin].
        let mut asked = outgoing.asked.clone();
        for hlc in response
            .records
            .iter()
            .map(|r| r.hlc())
            .chain(response.app_syncable_rows.iter().map(|r| r.hlc()))
        {
            asked.advance(hlc);
        }
        {
            let clock = lock(&parts.clock);
            if clock.state().wall_time > 0 {
                asked.advance(&clock.last());
            }
        }
        let request = ExchangeRequest {
            watermarks: asked.clone(),
            limit: Some(parts.config.page_limit as u64),
            protocol_version: Some(PROTOCOL_VERSION),
            accept_inline_blobs: (outgoing.own_inline > 0).then_some(outgoing.own_inline),
            ..ExchangeRequest::default()
        };
        let next = Outgoing {
            asked,
            loaded: None,
            report: RoundReport {
                pipelined: true,
                ..RoundReport::default()
            },
            scope: outgoing.scope.clone(),
            own_inline: outgoing.own_inline,
        };
        Some((next, request))
    }
}

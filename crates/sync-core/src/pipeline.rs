//! Pipelined pulls (decision 0012): while one page lands, the next is already asked for;
//! pipelined pushes (decision 0015): while one page is out, the next is already cut.
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
//!
//! **Pipelined pushes** (decision 0015) overlap the other way: while a round that ships a
//! full page is out, the next page is cut (its blobs read for inline, or pushed), assuming
//! the responder accepts the page whole, so that this node's selection and reads overlap
//! the responder's work. The page cut ahead is sent only after the round before it has
//! landed with nothing left behind, and only if the responder's coverage of every origin
//! node it ships is then exactly what it was cut against: it is then each node's lowest
//! versions the responder has not covered (INV-06), as a fresh cut would be. Otherwise it
//! is dropped (blobs it pushed are orphans, harmless) and the page is cut again. It asks
//! from the watermarks persisted by then, and lands as any normal round.
//!
//! Rounds also pull before they push small blobs to a peer whose inline limit they do not
//! know yet: the first round then ships nothing and learns the limit from the response, so
//! the page's small blobs ride inside the next request rather than one `/files` upload each.

use std::{future::Future, task::Poll};

use futures_util::future::{self, poll_fn, BoxFuture};
use sync_protocol::{ExchangeRequest, ExchangeResponse, PROTOCOL_VERSION};

use crate::{
    round::{lock, Outgoing, Shipping},
    ChannelState, Error, ExchangeError, Requester, RoundReport,
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
    /// The next shipping page, cut while the previous one was out (pipelined pushes): sent
    /// once that one has landed, if the peer's coverage is what it was cut against.
    cut_ahead: Option<(Outgoing, ExchangeRequest)>,
    /// The last round that landed left nothing behind: no failure, refusal or gap.
    clean: bool,
    /// The last round that landed wrote no item here (a page cut ahead of it was cut from
    /// the items held then, so it still holds only if nothing inbound replaced any).
    wrote_nothing: bool,
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
            cut_ahead: None,
            clean: true,
            wrote_nothing: true,
            run: 0,
        }
    }
}

/// A normal round's request, sent.
async fn send(requester: &Requester) -> Result<(Outgoing, ExchangeResponse), Error> {
    let (outgoing, request) = requester
        .prepare(Shipping::AfterLearningInlineLimit)
        .await?;
    let response = requester.parts().transport.exchange(request).await?;
    Ok((outgoing, response))
}

/// The state a page cut ahead assumes once `request` has landed whole: own as it is, the
/// peer covering every item shipped.
fn assumed_after(outgoing: &Outgoing, request: &ExchangeRequest) -> Option<ChannelState> {
    let loaded = outgoing.loaded.as_ref()?;
    let mut peer = loaded.peer.clone();
    for hlc in request
        .records
        .iter()
        .map(|r| r.hlc())
        .chain(request.app_syncable_rows.iter().map(|r| r.hlc()))
    {
        peer.advance(hlc);
    }
    Some(ChannelState {
        own: loaded.own.clone(),
        peer,
    })
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
        let cut_ahead = self.cut_ahead.take();
        let (outgoing, response) = match self.in_flight.take() {
            Some((outgoing, pending)) => match pending.await {
                Ok(response) => (outgoing, response),
                Err(e) => {
                    // It changed nothing anywhere; a normal round asks again.
                    tracing::debug!(error = %e, "pipelined pull failed; asking again");
                    send(requester).await?
                }
            },
            None => self.ship(cut_ahead).await?,
        };
        self.run = if outgoing.report.pipelined {
            self.run + 1
        } else {
            0
        };
        let Some((next, request)) = self.pipelined_request(&outgoing, &response) else {
            let report = match requester.land(outgoing, response).await {
                Ok(report) => report,
                Err(e) => {
                    // A page cut ahead assumed this one would land.
                    self.cut_ahead = None;
                    return Err(e);
                }
            };
            self.clean = nothing_left_behind(&report);
            self.wrote_nothing = report.applied == 0;
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
        self.wrote_nothing = report.applied == 0;
        let pending = match answered {
            Some(r) => Box::pin(future::ready(r)),
            None => pending,
        };
        self.in_flight = Some((next, pending));
        Ok(report)
    }

    /// A normal round: the page cut ahead when it still holds (else a fresh cut), sent; and
    /// while it is out, the next page cut ahead when this one ships a full page cleanly.
    async fn ship(
        &mut self,
        cut_ahead: Option<(Outgoing, ExchangeRequest)>,
    ) -> Result<(Outgoing, ExchangeResponse), Error> {
        let requester = self.requester;
        let parts = requester.parts();
        let check = parts.config.cut_ahead_check;
        let ready = match cut_ahead.filter(|_| !check || (self.clean && self.wrote_nothing)) {
            Some((outgoing, request)) => requester.cut_ahead_still_holds(outgoing, request).await?,
            None => None,
        };
        let (outgoing, request) = match ready {
            Some(ready) => ready,
            None => {
                requester
                    .prepare(Shipping::AfterLearningInlineLimit)
                    .await?
            }
        };
        let sent = &outgoing.report;
        let assumed = (parts.config.pipelined_pushes
            && sent.shipped > 0
            && sent.outbound_has_more
            && sent.failures.is_empty()
            && sent.outbound_blocked.is_none())
        .then(|| assumed_after(&outgoing, &request))
        .flatten();
        let transport = parts.transport.clone();
        let exchange = transport.exchange(request);
        let Some(assumed) = assumed else {
            return Ok((outgoing, exchange.await?));
        };
        // Cut the next page while this one is out; a failed cut is dropped (the next round
        // cuts again), a failed exchange fails the round as ever.
        let next = requester.prepare_from(Shipping::AfterLearningInlineLimit, Some(assumed));
        let (response, next) = future::join(exchange, next).await;
        let response = response?;
        self.cut_ahead = next.ok().filter(|(next, _)| next.report.shipped > 0);
        Ok((outgoing, response))
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

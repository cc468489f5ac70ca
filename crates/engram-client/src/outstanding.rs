//! Bookkeeping of one observe session's unanswered observations: which
//! caller number each has, which wire number it went out under, what must be
//! (re)sent when, and which answers are ready to hand to the caller in order.
//!
//! Two numberings meet here. The *caller* number is what `send` returned:
//! 1, 2, 3, ... in send order, never reused; answers go back in that order.
//! The *wire* number is what the server sees: per server session, from 1,
//! +1 per observation sent. They differ once an overloaded observation is
//! resent (under a new wire number) or a lost session is replaced (wire
//! numbers restart at 1). Pure logic, no I/O: the session task drives it.

use std::collections::{BTreeMap, VecDeque};

use engram_proto::v1::observation_ack::Status as AckStatus;
use engram_proto::v1::{Episode, Observation, ObservationAck};
use tokio::time::Instant;

use crate::answer::{Ack, Answer, RejectReason, Rejection};
use crate::options::RetryPolicy;

/// What an ack did to the bookkeeping.
#[derive(Debug, PartialEq)]
pub(crate) enum AckOutcome {
    /// The observation has its final answer.
    Answered,
    /// Overloaded (or unavailable): it will be resent after `delay`.
    Retrying {
        sequence_number: u64,
        retry: u32,
        delay: std::time::Duration,
    },
}

#[derive(Debug)]
enum State {
    /// Needs a (new) wire number; listed in `waiting`.
    Waiting,
    /// Sent in the current session; listed (with its wire number) in `on_wire`.
    OnWire,
    /// Answered; handed to the caller once everything before it is.
    Done(Box<Answer>),
}

#[derive(Debug)]
struct Entry<P> {
    seq: u64,
    episode: Episode,
    priority: i32,
    retries: u32,
    state: State,
    /// Released when the entry leaves (the caller's in-flight slot).
    permit: P,
}

/// The unanswered observations of one session, bounded by the caller's
/// in-flight permits (one `P` per entry), never by this type itself.
#[derive(Debug)]
pub(crate) struct Outstanding<P> {
    /// By caller number, contiguous; the front is the oldest not yet handed
    /// to the caller.
    entries: VecDeque<Entry<P>>,
    /// (wire, caller) of observations sent in this session and not yet
    /// answered, in wire order: acks must come in exactly this order.
    on_wire: VecDeque<(u64, u64)>,
    /// Caller numbers to (re)send, with the earliest time each may go;
    /// sent in caller order.
    waiting: BTreeMap<u64, Instant>,
    next_wire: u64,
    retry: RetryPolicy,
}

impl<P> Outstanding<P> {
    pub(crate) fn new(retry: RetryPolicy) -> Self {
        Outstanding {
            entries: VecDeque::new(),
            on_wire: VecDeque::new(),
            waiting: BTreeMap::new(),
            next_wire: 1,
            retry,
        }
    }

    /// Entries not yet handed to the caller.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest wire number sent in this session (0 before the first).
    pub(crate) fn highest_sent(&self) -> u64 {
        self.next_wire - 1
    }

    /// Adds a new observation with caller number `seq`, to be sent as soon
    /// as the session may. Caller numbers must come in order, +1 each.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        episode: Episode,
        priority: i32,
        permit: P,
        now: Instant,
    ) {
        if let Some(last) = self.entries.back() {
            debug_assert_eq!(seq, last.seq + 1, "caller numbers must be contiguous");
        }
        self.entries.push_back(Entry {
            seq,
            episode,
            priority,
            retries: 0,
            state: State::Waiting,
            permit,
        });
        self.waiting.insert(seq, now);
    }

    /// When the next observation may be sent, if one is waiting.
    pub(crate) fn next_send_at(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|(_, at)| *at)
    }

    /// Takes the next waiting observation (whatever its time: the caller
    /// checked [`Self::next_send_at`]) and numbers it for the wire.
    pub(crate) fn take_next(&mut self) -> Option<Observation> {
        let (seq, _) = self.waiting.pop_first()?;
        let wire = self.next_wire;
        self.next_wire += 1;
        let i = self.index(seq);
        let e = &mut self.entries[i];
        e.state = State::OnWire;
        self.on_wire.push_back((wire, seq));
        Some(observation(wire, e))
    }

    /// Applies the server's ack. An ack that does not answer the oldest
    /// observation on the wire, or an out-of-order rejection, means the two
    /// sides disagree on numbering: a protocol error.
    pub(crate) fn on_ack(
        &mut self,
        ack: &ObservationAck,
        now: Instant,
    ) -> Result<AckOutcome, String> {
        let Some(&(wire, seq)) = self.on_wire.front() else {
            return Err(format!(
                "ack for sequence {} but no observation is waiting for one",
                ack.sequence_number
            ));
        };
        if ack.sequence_number != wire {
            return Err(format!(
                "ack for sequence {} but the oldest unanswered observation is {wire}",
                ack.sequence_number
            ));
        }
        let status = AckStatus::try_from(ack.status).unwrap_or(AckStatus::AckUnspecified);
        let reason = RejectReason::from_wire(ack.reason);
        if status == AckStatus::AckUnspecified {
            return Err(format!(
                "ack for sequence {wire} has no status (expected ACCEPTED or REJECTED)"
            ));
        }
        if status == AckStatus::AckRejected && reason == RejectReason::OutOfOrder {
            return Err(format!(
                "the server rejected sequence {wire} as out of order: {}",
                ack.message
            ));
        }
        self.on_wire.pop_front();
        let i = self.index(seq);
        let e = &mut self.entries[i];
        if status == AckStatus::AckAccepted {
            e.state = State::Done(Box::new(Answer::Accepted(Ack {
                sequence_number: seq,
                memory_id: ack.memory_id.clone(),
                server_sequence: ack.server_sequence,
                committed_at: ack.committed_at,
                duplicate: ack.duplicate,
                replayed: ack.replayed,
                wire_sequence: wire,
                retries: e.retries,
            })));
            return Ok(AckOutcome::Answered);
        }
        if reason.is_retryable() && e.retries < self.retry.max_retries {
            e.retries += 1;
            e.state = State::Waiting;
            let delay = self.retry.delay(ack.retry_after_ms);
            self.waiting.insert(seq, now + delay);
            return Ok(AckOutcome::Retrying {
                sequence_number: seq,
                retry: e.retries,
                delay,
            });
        }
        e.state = State::Done(Box::new(Answer::Rejected(Rejection {
            sequence_number: seq,
            reason,
            message: ack.message.clone(),
            retry_after: (ack.retry_after_ms > 0)
                .then(|| std::time::Duration::from_millis(ack.retry_after_ms)),
            retries: e.retries,
            episode: e.episode.clone(),
        })));
        Ok(AckOutcome::Answered)
    }

    /// The next answer for the caller, once everything before it has one.
    pub(crate) fn pop_answered(&mut self) -> Option<(Answer, P)> {
        if !matches!(self.entries.front()?.state, State::Done(_)) {
            return None;
        }
        let e = self.entries.pop_front()?;
        match e.state {
            State::Done(answer) => Some((*answer, e.permit)),
            _ => unreachable!("checked above"),
        }
    }

    /// The session was resumed and the server's last answer was
    /// `last_acked`: returns every observation on the wire without an answer,
    /// to be resent under the same numbers, in order (the server replays
    /// the answers to those it had answered). New observations continue
    /// after [`Self::highest_sent`].
    ///
    /// Fails when the server's position cannot be reconciled with ours (it
    /// claims answers to numbers never sent, or forgot answers we have):
    /// the caller then starts a new session instead.
    pub(crate) fn resume(&self, last_acked: u64) -> Result<Vec<Observation>, String> {
        let highest = self.highest_sent();
        if last_acked > highest {
            return Err(format!(
                "the server answered up to sequence {last_acked} but this client sent only up to {highest}"
            ));
        }
        let first_unanswered = self.on_wire.front().map_or(self.next_wire, |w| w.0);
        if last_acked + 1 < first_unanswered {
            return Err(format!(
                "the server's last answer is sequence {last_acked}, but this client already has answers up to {}",
                first_unanswered - 1
            ));
        }
        Ok(self
            .on_wire
            .iter()
            .map(|&(wire, seq)| observation(wire, &self.entries[self.index(seq)]))
            .collect())
    }

    /// The session is gone (lost by the server): everything on the wire
    /// waits to be sent again, numbered from 1 in the new session.
    pub(crate) fn restart_session(&mut self, now: Instant) {
        for (_, seq) in self.on_wire.drain(..) {
            let i = seq - self.entries[0].seq;
            self.entries[i as usize].state = State::Waiting;
            self.waiting.insert(seq, now);
        }
        self.next_wire = 1;
    }

    /// Answers every observation not yet sent (or waiting for a retry) with
    /// a local `Closed` rejection: the caller closed the session without
    /// draining.
    pub(crate) fn reject_waiting(&mut self, message: &str) {
        let waiting = std::mem::take(&mut self.waiting);
        for seq in waiting.into_keys() {
            let i = self.index(seq);
            self.entries[i].state = State::Done(closed(&self.entries[i], message));
        }
    }

    /// Answers everything still unanswered with a local `Closed` rejection:
    /// the server closed the session.
    pub(crate) fn reject_all(&mut self, message: &str) {
        self.waiting.clear();
        self.on_wire.clear();
        for e in &mut self.entries {
            if !matches!(e.state, State::Done(_)) {
                e.state = State::Done(closed(e, message));
            }
        }
    }

    /// Empties the bookkeeping after a fatal error: the observations not yet
    /// handed to the caller (their outcome unknown to it), in order.
    pub(crate) fn take_unconfirmed(&mut self) -> Vec<(u64, Episode)> {
        self.waiting.clear();
        self.on_wire.clear();
        self.entries.drain(..).map(|e| (e.seq, e.episode)).collect()
    }

    fn index(&self, seq: u64) -> usize {
        (seq - self.entries[0].seq) as usize
    }
}

fn observation<P>(wire: u64, e: &Entry<P>) -> Observation {
    Observation {
        sequence_number: wire,
        episode: Some(e.episode.clone()),
        priority: e.priority,
    }
}

fn closed<P>(e: &Entry<P>, message: &str) -> Box<Answer> {
    Box::new(Answer::Rejected(Rejection {
        sequence_number: e.seq,
        reason: RejectReason::Closed,
        message: message.to_owned(),
        retry_after: None,
        retries: e.retries,
        episode: e.episode.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use engram_proto::v1::observation_ack::Reason;

    use super::*;

    type Out = Outstanding<()>;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            default_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    fn ep(i: u64) -> Episode {
        Episode {
            id: format!("e{i}"),
            what: format!("observation {i}"),
            embedding: vec![1.0, 0.0],
            ..Default::default()
        }
    }

    fn accepted(wire: u64, server_sequence: u64) -> ObservationAck {
        ObservationAck {
            sequence_number: wire,
            status: AckStatus::AckAccepted as i32,
            memory_id: format!("m{server_sequence}"),
            server_sequence,
            ..Default::default()
        }
    }

    fn rejected(wire: u64, reason: Reason, retry_after_ms: u64) -> ObservationAck {
        ObservationAck {
            sequence_number: wire,
            status: AckStatus::AckRejected as i32,
            reason: reason as i32,
            retry_after_ms,
            message: "no".into(),
            ..Default::default()
        }
    }

    fn pushed(n: u64, now: Instant) -> Out {
        let mut o = Out::new(policy(3));
        for seq in 1..=n {
            o.push(seq, ep(seq), 0, (), now);
        }
        o
    }

    fn send_all(o: &mut Out) -> Vec<u64> {
        std::iter::from_fn(|| o.take_next())
            .map(|obs| obs.sequence_number)
            .collect()
    }

    fn answers(o: &mut Out) -> Vec<Answer> {
        std::iter::from_fn(|| o.pop_answered())
            .map(|(a, ())| a)
            .collect()
    }

    #[test]
    fn in_order_acks_answer_in_order() {
        let now = Instant::now();
        let mut o = pushed(3, now);
        assert_eq!(o.next_send_at(), Some(now));
        assert_eq!(send_all(&mut o), vec![1, 2, 3]);
        assert_eq!(o.next_send_at(), None);
        assert_eq!(o.on_ack(&accepted(1, 10), now), Ok(AckOutcome::Answered));
        assert_eq!(o.on_ack(&accepted(2, 11), now), Ok(AckOutcome::Answered));
        let a = answers(&mut o);
        assert_eq!(a.len(), 2);
        let first = a[0].accepted().unwrap();
        assert_eq!(
            (
                first.sequence_number,
                first.wire_sequence,
                first.server_sequence
            ),
            (1, 1, 10)
        );
        assert_eq!(first.memory_id, "m10");
        assert_eq!(o.len(), 1);
        o.on_ack(&accepted(3, 12), now).unwrap();
        assert_eq!(answers(&mut o).len(), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn an_ack_out_of_order_is_a_protocol_error() {
        let now = Instant::now();
        let mut o = pushed(2, now);
        send_all(&mut o);
        assert!(o
            .on_ack(&accepted(2, 1), now)
            .unwrap_err()
            .contains("oldest unanswered observation is 1"));
        assert!(o
            .on_ack(&rejected(1, Reason::RejectOutOfOrder, 0), now)
            .is_err());
        let mut empty = Out::new(policy(1));
        assert!(empty.on_ack(&accepted(1, 1), now).is_err());
        let mut o = pushed(1, now);
        send_all(&mut o);
        let no_status = ObservationAck {
            sequence_number: 1,
            ..Default::default()
        };
        assert!(o.on_ack(&no_status, now).unwrap_err().contains("no status"));
    }

    #[test]
    fn an_overloaded_observation_is_resent_under_a_new_number_and_answers_stay_in_order() {
        let t0 = Instant::now();
        let mut o = pushed(3, t0);
        assert_eq!(send_all(&mut o), vec![1, 2, 3]);
        let out = o
            .on_ack(&rejected(1, Reason::RejectOverloaded, 250), t0)
            .unwrap();
        assert_eq!(
            out,
            AckOutcome::Retrying {
                sequence_number: 1,
                retry: 1,
                delay: Duration::from_millis(250)
            }
        );
        o.on_ack(&accepted(2, 1), t0).unwrap();
        o.on_ack(&accepted(3, 2), t0).unwrap();
        // 2 and 3 are answered but wait behind 1.
        assert!(answers(&mut o).is_empty());
        assert_eq!(o.next_send_at(), Some(t0 + Duration::from_millis(250)));
        let resent = o.take_next().unwrap();
        assert_eq!(resent.sequence_number, 4);
        assert_eq!(resent.episode.as_ref().unwrap().id, "e1");
        o.on_ack(&accepted(4, 3), t0).unwrap();
        let a = answers(&mut o);
        let seqs: Vec<u64> = a.iter().map(Answer::sequence_number).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let first = a[0].accepted().unwrap();
        assert_eq!(
            (first.wire_sequence, first.retries, first.server_sequence),
            (4, 1, 3)
        );
    }

    #[test]
    fn retries_are_bounded_and_the_last_rejection_reaches_the_caller() {
        let now = Instant::now();
        let mut o = Out::new(policy(2));
        o.push(1, ep(1), 0, (), now);
        for wire in 1..=2 {
            assert_eq!(o.take_next().unwrap().sequence_number, wire);
            let out = o
                .on_ack(&rejected(wire, Reason::RejectOverloaded, 0), now)
                .unwrap();
            assert!(matches!(out, AckOutcome::Retrying { retry, delay, .. }
                if retry == wire as u32 && delay == Duration::from_millis(100)));
        }
        assert_eq!(o.take_next().unwrap().sequence_number, 3);
        assert_eq!(
            o.on_ack(&rejected(3, Reason::RejectOverloaded, 40), now),
            Ok(AckOutcome::Answered)
        );
        let a = answers(&mut o);
        let r = a[0].rejected().unwrap();
        assert_eq!(r.reason, RejectReason::Overloaded);
        assert_eq!(r.retries, 2);
        assert_eq!(r.retry_after, Some(Duration::from_millis(40)));
        assert_eq!(r.episode.id, "e1");
    }

    #[test]
    fn an_invalid_observation_is_answered_in_place() {
        let now = Instant::now();
        let mut o = pushed(2, now);
        send_all(&mut o);
        o.on_ack(&rejected(1, Reason::RejectInvalid, 0), now)
            .unwrap();
        o.on_ack(&accepted(2, 1), now).unwrap();
        let a = answers(&mut o);
        assert_eq!(a[0].rejected().unwrap().reason, RejectReason::Invalid);
        assert!(a[1].is_accepted());
    }

    #[test]
    fn resume_resends_everything_unanswered_under_the_same_numbers() {
        let now = Instant::now();
        let mut o = pushed(5, now);
        send_all(&mut o);
        o.on_ack(&accepted(1, 1), now).unwrap();
        o.on_ack(&accepted(2, 2), now).unwrap();
        // The server answered 3 and 4 but those acks were lost with the stream.
        let resend: Vec<u64> = o
            .resume(4)
            .unwrap()
            .iter()
            .map(|x| x.sequence_number)
            .collect();
        assert_eq!(resend, vec![3, 4, 5]);
        // Replays answer them; numbering continues after 5.
        let mut replay = accepted(3, 3);
        replay.replayed = true;
        o.on_ack(&replay, now).unwrap();
        o.push(6, ep(6), 0, (), now);
        assert_eq!(o.take_next().unwrap().sequence_number, 6);
        let a = answers(&mut o);
        assert_eq!(a.len(), 3);
        assert!(a[2].accepted().unwrap().replayed);
    }

    #[test]
    fn resume_rejects_a_server_position_it_cannot_reconcile() {
        let now = Instant::now();
        let mut o = pushed(3, now);
        send_all(&mut o);
        o.on_ack(&accepted(1, 1), now).unwrap();
        assert!(o.resume(4).unwrap_err().contains("sent only up to 3"));
        // We hold the answer to 1; a server that says it answered nothing forgot it.
        assert!(o
            .resume(0)
            .unwrap_err()
            .contains("already has answers up to 1"));
        assert_eq!(o.resume(1).unwrap().len(), 2);
        assert_eq!(o.resume(3).unwrap().len(), 2);
    }

    #[test]
    fn a_lost_session_renumbers_everything_from_one_in_caller_order() {
        let now = Instant::now();
        let mut o = pushed(4, now);
        send_all(&mut o);
        o.on_ack(&accepted(1, 1), now).unwrap();
        o.on_ack(&rejected(2, Reason::RejectOverloaded, 500), now)
            .unwrap();
        o.restart_session(now);
        assert_eq!(o.highest_sent(), 0);
        // 3 and 4 go first (ready now); 2 waits for its retry time.
        assert_eq!(o.next_send_at(), Some(now + Duration::from_millis(500)));
        let sent: Vec<(u64, String)> = std::iter::from_fn(|| o.take_next())
            .map(|x| (x.sequence_number, x.episode.unwrap().id))
            .collect();
        assert_eq!(
            sent,
            vec![(1, "e2".into()), (2, "e3".into()), (3, "e4".into())]
        );
    }

    #[test]
    fn closing_answers_what_is_left_with_closed() {
        let now = Instant::now();
        let mut o = pushed(3, now);
        o.take_next();
        o.reject_waiting("closed before it was sent");
        assert_eq!(o.next_send_at(), None);
        o.on_ack(&accepted(1, 1), now).unwrap();
        let a = answers(&mut o);
        assert!(a[0].is_accepted());
        assert_eq!(a[1].rejected().unwrap().reason, RejectReason::Closed);
        assert_eq!(
            a[2].rejected().unwrap().message,
            "closed before it was sent"
        );

        let mut o = pushed(2, now);
        send_all(&mut o);
        o.reject_all("the server closed the session");
        assert_eq!(answers(&mut o).len(), 2);
        assert!(o.is_empty());
    }

    #[test]
    fn unconfirmed_observations_are_handed_back_in_order() {
        let now = Instant::now();
        let mut o = pushed(3, now);
        send_all(&mut o);
        o.on_ack(&accepted(1, 1), now).unwrap();
        let left: Vec<u64> = o.take_unconfirmed().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![1, 2, 3]);
        assert!(o.is_empty());
    }
}

//! The flow table of one worker's socket of a UDP service port: client address → flow.
//!
//! A flow is the datagrams of one client address (IP and port), pinned to one endpoint through
//! an upstream socket of its own. The table is owned by the worker's serve loop alone (the
//! kernel's reuseport hash keeps a client on one worker), so it needs no lock; flows live in a
//! slab whose index is the flow's id, so a ready upstream socket finds its flow without a hash.
//! The table also keeps the service-wide flow count (shared by the workers' tables, checked
//! against `max_udp_flows` once per new flow) and ends flows idle for `udp_idle_timeout` or
//! pinned to an endpoint that left the service.
//!
//! The table is generic over the upstream socket so the per-datagram path can be measured and
//! tested without a network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::service::endpoint::ActiveFlow;
use crate::service::{Endpoint, UdpDrop};

/// A flow's index in its table.
pub type FlowId = usize;

/// One client address's flow.
#[derive(Debug)]
pub struct Flow<U> {
    client: SocketAddr,
    /// The endpoint, counted in its active flows while pinned.
    pin: ActiveFlow,
    /// Milliseconds since the table's epoch at the last datagram either way.
    last_active: u64,
    /// The endpoint refused a datagram (ICMP port unreachable): move at the next one.
    refused: bool,
    upstream: U,
}

impl<U> Flow<U> {
    /// The client address: the peer the flow's datagrams come from and its replies go to (a
    /// load balancer, on a port that accepts PROXY headers).
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The endpoint the flow is pinned to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        self.pin.endpoint()
    }

    /// The socket connected to the endpoint.
    pub fn upstream(&self) -> &U {
        &self.upstream
    }

    /// Whether the flow may stay where it is: its endpoint is in rotation and has not refused
    /// a datagram.
    pub fn is_placed_well(&self) -> bool {
        !self.refused && self.endpoint().in_rotation()
    }

    /// Whether the endpoint refused a datagram since the flow was pinned.
    pub fn was_refused(&self) -> bool {
        self.refused
    }

    /// Notes an ICMP port unreachable from the endpoint: the next datagram re-pins the flow.
    pub fn mark_refused(&mut self) {
        self.refused = true;
    }

    /// Records a datagram either way at `stamp` (from [`FlowTable::stamp`]).
    pub fn touch(&mut self, stamp: u64) {
        self.last_active = stamp;
    }

    /// Moves the flow to another endpoint through a new socket; the old socket is closed, so
    /// late replies of the old endpoint are dropped by the kernel.
    pub fn repin(&mut self, pin: ActiveFlow, upstream: U) {
        self.pin = pin;
        self.upstream = upstream;
        self.refused = false;
    }
}

/// What a client datagram finds in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An existing flow that stays where it is.
    Forward(FlowId),
    /// An existing flow whose endpoint left rotation or refused: place it again.
    Repin(FlowId),
    /// No flow yet for this client.
    New,
}

/// The flows of one worker's socket.
#[derive(Debug)]
pub struct FlowTable<U> {
    by_client: HashMap<SocketAddr, FlowId>,
    slots: Vec<Option<Flow<U>>>,
    /// Empty slots, reused last-freed first.
    free: Vec<FlowId>,
    /// The service's flows over all its tables.
    count: Arc<AtomicUsize>,
    /// Stamps count milliseconds from here.
    epoch: Instant,
}

impl<U> FlowTable<U> {
    /// An empty table whose flows count in the service-wide `count`.
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        FlowTable {
            by_client: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            count,
            epoch: Instant::now(),
        }
    }

    /// Flows in this table.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether the table has no flow.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Slots allocated so far (ids are below this).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// `now` as the table stamps it: a clock read once per batch of datagrams, not per flow.
    pub fn stamp(&self, now: Instant) -> u64 {
        // 584 million years of milliseconds fit.
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The flow of `client`, if any.
    pub fn lookup(&self, client: SocketAddr) -> Option<FlowId> {
        self.by_client.get(&client).copied()
    }

    /// Where a datagram from `client` goes; an existing flow is stamped active at `stamp`.
    pub fn route(&mut self, client: SocketAddr, stamp: u64) -> Route {
        let Some(id) = self.lookup(client) else {
            return Route::New;
        };
        let flow = self.slots[id]
            .as_mut()
            .expect("an id in the map has a flow");
        flow.touch(stamp);
        if flow.is_placed_well() {
            Route::Forward(id)
        } else {
            Route::Repin(id)
        }
    }

    /// The flow `id`, if it is there.
    pub fn get(&self, id: FlowId) -> Option<&Flow<U>> {
        self.slots.get(id)?.as_ref()
    }

    /// The flow `id`, if it is there.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow<U>> {
        self.slots.get_mut(id)?.as_mut()
    }

    /// Adds the flow of `client` (which has none), active at `stamp`, when the service has
    /// fewer than `max` flows: `place` then pins it (an endpoint and its socket), or says why
    /// not. [`UdpDrop::Limit`] when the service is full (nothing is placed then).
    pub fn try_insert(
        &mut self,
        max: usize,
        client: SocketAddr,
        stamp: u64,
        place: impl FnOnce() -> Result<(ActiveFlow, U), UdpDrop>,
    ) -> Result<FlowId, UdpDrop> {
        // One atomic add per new flow. At the limit, concurrent attempts of other workers may
        // see a brief overshoot and refuse too, which only errs on the safe side.
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(UdpDrop::Limit);
        }
        let (pin, upstream) = match place() {
            Ok(placed) => placed,
            Err(reason) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                return Err(reason);
            }
        };
        let flow = Flow {
            client,
            pin,
            last_active: stamp,
            refused: false,
            upstream,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(flow);
                id
            }
            None => {
                self.slots.push(Some(flow));
                self.slots.len() - 1
            }
        };
        let previous = self.by_client.insert(client, id);
        debug_assert!(previous.is_none(), "one flow per client");
        Ok(id)
    }

    /// Ends the flow `id`.
    pub fn remove(&mut self, id: FlowId) -> Option<Flow<U>> {
        let flow = self.slots.get_mut(id)?.take()?;
        self.by_client.remove(&flow.client);
        self.free.push(id);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(flow)
    }

    /// Ends every flow with no datagram either way for `idle` before `now`, and every flow
    /// whose endpoint's drain signal fired (it left the service, or its connections were
    /// closed); returns how many.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> usize {
        let now = self.stamp(now);
        let idle = idle.as_millis() as u64;
        let mut expired = 0;
        for id in 0..self.slots.len() {
            let ends = match &self.slots[id] {
                Some(flow) => now.saturating_sub(flow.last_active) >= idle || flow.pin.must_end(),
                None => continue,
            };
            if ends {
                self.remove(id);
                expired += 1;
            }
        }
        expired
    }
}

impl<U> Drop for FlowTable<U> {
    fn drop(&mut self) {
        // The service's count outlives this worker's socket (a reload may close one port).
        self.count.fetch_sub(self.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn endpoint(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            "flows-test",
            SocketAddr::from(([127, 0, 0, 1], port)),
            &CancellationToken::new(),
        ))
    }

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], port))
    }

    /// Adds the flow of `client` on `to` to `table` (limit 10), its socket `upstream`.
    fn add<U>(
        table: &mut FlowTable<U>,
        client: SocketAddr,
        to: &Arc<Endpoint>,
        upstream: U,
    ) -> FlowId {
        let stamp = table.stamp(Instant::now());
        table
            .try_insert(10, client, stamp, || Ok((to.flow_pinned(), upstream)))
            .unwrap()
    }

    /// A table whose upstream "socket" is a number, and a flow of `client(1)` on `to`.
    fn table_with_flow(to: &Arc<Endpoint>) -> (FlowTable<u32>, FlowId) {
        let mut table = FlowTable::new(Arc::new(AtomicUsize::new(0)));
        let id = add(&mut table, client(1), to, 7);
        (table, id)
    }

    #[test]
    fn per_flow_state_is_small() {
        let size = std::mem::size_of::<Flow<std::net::UdpSocket>>();
        let slot = std::mem::size_of::<Option<Flow<std::net::UdpSocket>>>();
        // The map entry (client address → id) comes on top: size_of::<(SocketAddr, FlowId)>().
        let entry = std::mem::size_of::<(SocketAddr, FlowId)>();
        println!("flow {size} B, slot {slot} B, map entry {entry} B");
        assert!(slot <= 112, "a flow slot grew to {slot} bytes");
        assert!(entry <= 40, "a map entry grew to {entry} bytes");
    }

    #[test]
    fn a_client_keeps_its_flow_until_the_endpoint_leaves_rotation() {
        let a = endpoint(1);
        let (mut table, id) = table_with_flow(&a);
        assert_eq!(a.active_flows(), 1);
        assert_eq!(table.route(client(1), 5), Route::Forward(id));
        assert_eq!(table.route(client(2), 5), Route::New);
        a.set_draining(true);
        assert_eq!(table.route(client(1), 6), Route::Repin(id));
        // Moved: the new endpoint counts the flow, the old one no longer does.
        let b = endpoint(2);
        table.get_mut(id).unwrap().repin(b.flow_pinned(), 8);
        assert_eq!((a.active_flows(), b.active_flows()), (0, 1));
        assert_eq!(table.route(client(1), 7), Route::Forward(id));
        assert_eq!(*table.get(id).unwrap().upstream(), 8);
    }

    #[test]
    fn a_refusal_re_pins_at_the_next_datagram() {
        let a = endpoint(1);
        let (mut table, id) = table_with_flow(&a);
        table.get_mut(id).unwrap().mark_refused();
        assert_eq!(table.route(client(1), 1), Route::Repin(id));
        table.get_mut(id).unwrap().repin(a.flow_pinned(), 9);
        assert!(!table.get(id).unwrap().was_refused());
        assert_eq!(table.route(client(1), 2), Route::Forward(id));
    }

    #[test]
    fn the_service_count_is_shared_and_limits_new_flows() {
        let count = Arc::new(AtomicUsize::new(0));
        let mut first: FlowTable<()> = FlowTable::new(Arc::clone(&count));
        let mut second: FlowTable<()> = FlowTable::new(Arc::clone(&count));
        let a = endpoint(1);
        let pin = || Ok((a.flow_pinned(), ()));
        first.try_insert(2, client(1), 0, pin).unwrap();
        // A flow that cannot be placed takes no place.
        let unplaced = second.try_insert(2, client(2), 0, || Err(UdpDrop::NoEndpoint));
        assert_eq!(unplaced, Err(UdpDrop::NoEndpoint));
        assert_eq!(count.load(Ordering::Relaxed), 1);
        let id = second.try_insert(2, client(2), 0, pin).unwrap();
        let full = first.try_insert(2, client(3), 0, || panic!("not placed when full"));
        assert_eq!(full, Err(UdpDrop::Limit), "the limit counts both tables");
        second.remove(id);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        // A table that goes (its port closed) gives its flows back.
        drop(first);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert_eq!(a.active_flows(), 0);
    }

    #[test]
    fn slots_are_reused() {
        let a = endpoint(1);
        let (mut table, id) = table_with_flow(&a);
        table.remove(id);
        assert_eq!(table.lookup(client(1)), None);
        let again = add(&mut table, client(3), &a, 1);
        assert_eq!((again, table.slots(), table.len()), (id, 1, 1));
    }

    #[test]
    fn a_flow_ends_at_the_sweep_once_its_endpoint_left_the_service() {
        let (gone, stays) = (endpoint(1), endpoint(2));
        let mut table = FlowTable::new(Arc::new(AtomicUsize::new(0)));
        add(&mut table, client(1), &gone, 1);
        let kept = add(&mut table, client(2), &stays, 2);
        let idle = Duration::from_secs(30);
        assert_eq!(table.expire(Instant::now(), idle), 0);
        gone.set_removed(true);
        assert_eq!(table.expire(Instant::now(), idle), 1);
        assert_eq!(table.lookup(client(1)), None);
        assert_eq!(table.lookup(client(2)), Some(kept));
        // Its count is back to zero, so whoever waits for it to be idle may forget it.
        assert_eq!((gone.active_flows(), gone.load()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn flows_end_after_the_idle_timeout_with_no_datagram_either_way() {
        let idle = Duration::from_secs(30);
        let a = endpoint(1);
        let (mut table, quiet) = table_with_flow(&a);
        let busy = add(&mut table, client(2), &a, 2);

        tokio::time::advance(Duration::from_secs(20)).await;
        // A reply (or a client datagram) keeps a flow alive.
        let stamp = table.stamp(Instant::now());
        table.get_mut(busy).unwrap().touch(stamp);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(table.expire(Instant::now(), idle), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(table.expire(Instant::now(), idle), 1);
        assert_eq!(table.lookup(client(1)), None);
        assert_eq!(table.lookup(client(2)), Some(busy));
        assert_eq!(a.active_flows(), 1);
        assert!(table.get(quiet).is_none());

        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(table.expire(Instant::now(), idle), 1);
        assert!(table.is_empty());
        assert_eq!(
            (a.active_flows(), table.count.load(Ordering::Relaxed)),
            (0, 0)
        );
    }
}

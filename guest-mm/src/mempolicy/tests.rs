use super::*;
use crate::mmzone::MAX_NR_ZONES;
use crate::zonelist::{Populated, Zonelist};
use proptest::prelude::*;

/// Four nodes: {0,1} close, {2,3} close, 0 far from 3.
///
/// ```text
///      0   1   2   3
///  0  10  15  30  40
///  1  15  10  20  25
///  2  30  20  10  12
///  3  40  25  12  10
/// ```
fn slit4() -> Distances {
    let mut d = Distances::uniform(4);
    d.set(0, 1, 15);
    d.set(0, 2, 30);
    d.set(0, 3, 40);
    d.set(1, 2, 20);
    d.set(1, 3, 25);
    d.set(2, 3, 12);
    d
}

fn all_normal(nr: usize) -> Populated {
    let mut p = [[false; MAX_NR_ZONES]; MAX_NUMNODES];
    for zones in p.iter_mut().take(nr) {
        zones[ZoneType::Normal as usize] = true;
    }
    p
}

fn plan_for(policy: Policy, local: usize) -> AllocPlan {
    plan(&policy, local, &mut InterleaveState::new(), &slit4())
}

/// Nodes an attempt's zonelist walk visits, in order.
fn walk(a: &AllocAttempt) -> Vec<usize> {
    let d = slit4();
    Zonelist::build_fallback(a.zonelist_node, &d, &all_normal(4))
        .zones_for(ZoneType::Normal, a.nodemask)
        .map(|z| z.node())
        .collect()
}

fn anywhere(node: usize) -> AllocAttempt {
    AllocAttempt {
        preferred_node: node,
        zonelist_node: node,
        nodemask: None,
        no_reclaim_nowarn: false,
    }
}

#[test]
fn default_and_local_allocate_locally_with_fallback() {
    for mode in [MemPolicy::Default, MemPolicy::Local] {
        let p = plan_for(Policy::new(mode), 2);
        assert_eq!(p.as_slice(), &[anywhere(2)]);
        assert_eq!(walk(&p.first()), vec![2, 3, 1, 0]);
    }
    assert_eq!(Policy::default().mode, MemPolicy::Default);
}

#[test]
fn preferred_starts_at_its_node_and_falls_back_everywhere() {
    let p = plan_for(Policy::new(MemPolicy::Preferred(3)), 0);
    assert_eq!(p.as_slice(), &[anywhere(3)]);
    assert_eq!(walk(&p.first()), vec![3, 2, 1, 0]);
}

#[test]
fn bind_uses_local_node_when_allowed() {
    let mask = NodeMask::of(&[0, 2]);
    let p = plan_for(Policy::new(MemPolicy::Bind(mask)), 0);
    assert_eq!(p.len(), 1);
    let a = p.first();
    assert_eq!((a.preferred_node, a.zonelist_node), (0, 0));
    assert_eq!(a.nodemask, Some(mask));
    assert!(!a.no_reclaim_nowarn);
    assert_eq!(walk(&a), vec![0, 2]);
}

#[test]
fn bind_outside_local_prefers_nearest_member() {
    let p = plan_for(Policy::new(MemPolicy::Bind(NodeMask::of(&[1, 3]))), 0);
    let a = p.first();
    assert_eq!(a.preferred_node, 1);
    assert_eq!(a.zonelist_node, 0);
    assert_eq!(walk(&a), vec![1, 3]);
    let p = plan_for(Policy::new(MemPolicy::Bind(NodeMask::of(&[2, 3]))), 0);
    assert_eq!(p.first().preferred_node, 2);
    assert_eq!(walk(&p.first()), vec![2, 3]);
}

#[test]
fn bind_on_one_node_never_leaves_it() {
    // Row 60, plan side: if node 2 is full, nothing else is even tried.
    let p = plan_for(Policy::new(MemPolicy::Bind(NodeMask::single(2))), 0);
    assert_eq!(p.len(), 1);
    assert_eq!(walk(&p.first()), vec![2]);
}

#[test]
fn bind_home_node_ordering_follows_distance_from_home() {
    let all = NodeMask::first_n(4);
    let p = plan_for(Policy::new(MemPolicy::Bind(all)).with_home_node(3), 0);
    let a = p.first();
    assert_eq!((a.preferred_node, a.zonelist_node), (3, 3));
    assert_eq!(walk(&a), vec![3, 2, 1, 0]);
    // Same set without a home node: distance from the local node instead.
    assert_eq!(
        walk(&plan_for(Policy::new(MemPolicy::Bind(all)), 0).first()),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn home_node_outside_the_set_picks_members_nearest_home() {
    let mask = NodeMask::of(&[0, 1, 2]);
    let p = plan_for(Policy::new(MemPolicy::Bind(mask)).with_home_node(3), 0);
    let a = p.first();
    assert_eq!(a.zonelist_node, 3);
    assert_eq!(a.preferred_node, 2);
    assert_eq!(walk(&a), vec![2, 1, 0]);
}

#[test]
fn preferred_many_tries_set_quietly_then_falls_back() {
    let mask = NodeMask::of(&[2, 3]);
    let p = plan_for(Policy::new(MemPolicy::PreferredMany(mask)), 1);
    assert_eq!(p.len(), 2);
    let [first, second] = [p.as_slice()[0], p.as_slice()[1]];
    assert_eq!(
        first,
        AllocAttempt {
            preferred_node: 2,
            zonelist_node: 1,
            nodemask: Some(mask),
            no_reclaim_nowarn: true,
        }
    );
    assert_eq!(walk(&first), vec![2, 3]);
    // Row 60: the set being full is not fatal; everything is tried after.
    assert_eq!(second, anywhere(1));
    assert_eq!(walk(&second), vec![1, 0, 2, 3]);
    assert_eq!(p.iter().count(), 2);
}

#[test]
fn preferred_many_local_member_goes_first() {
    let p = plan_for(
        Policy::new(MemPolicy::PreferredMany(NodeMask::of(&[0, 3]))),
        3,
    );
    assert_eq!(p.first().preferred_node, 3);
    assert_eq!(walk(&p.first()), vec![3, 0]);
}

#[test]
fn preferred_many_home_node_ordering_follows_distance() {
    let mask = NodeMask::of(&[0, 1, 2]);
    let p = plan_for(
        Policy::new(MemPolicy::PreferredMany(mask)).with_home_node(3),
        0,
    );
    let [first, second] = [p.as_slice()[0], p.as_slice()[1]];
    assert_eq!(first.preferred_node, 2);
    assert_eq!(walk(&first), vec![2, 1, 0]);
    assert!(first.no_reclaim_nowarn);
    assert_eq!(second, anywhere(3));
    assert_eq!(walk(&second), vec![3, 2, 1, 0]);
}

#[test]
fn interleave_round_robins_over_the_set() {
    let d = slit4();
    let pol = Policy::new(MemPolicy::Interleave(NodeMask::of(&[1, 3])));
    let mut st = InterleaveState::new();
    let nodes: Vec<_> = (0..5)
        .map(|_| {
            let p = plan(&pol, 0, &mut st, &d);
            assert_eq!(p.len(), 1);
            assert_eq!(p.first().nodemask, None);
            assert_eq!(p.first().zonelist_node, p.first().preferred_node);
            p.first().preferred_node
        })
        .collect();
    assert_eq!(nodes, vec![1, 3, 1, 3, 1]);
    // After 1, a changed set continues above 1.
    let pol = Policy::new(MemPolicy::Interleave(NodeMask::of(&[0, 2, 3])));
    assert_eq!(plan(&pol, 0, &mut st, &d).first().preferred_node, 2);
    assert_eq!(plan(&pol, 0, &mut st, &d).first().preferred_node, 3);
    assert_eq!(plan(&pol, 0, &mut st, &d).first().preferred_node, 0);
    assert_eq!(InterleaveState::default(), InterleaveState::new());
}

#[test]
fn invalid_policies_still_plan_safely() {
    let d = slit4();
    let mut st = InterleaveState::new();
    let p = plan(
        &Policy::new(MemPolicy::Interleave(NodeMask::EMPTY)),
        2,
        &mut st,
        &d,
    );
    assert_eq!(p.as_slice(), &[anywhere(2)]);
    let p = plan(
        &Policy::new(MemPolicy::Bind(NodeMask::EMPTY)),
        2,
        &mut st,
        &d,
    );
    assert_eq!(p.first().nodemask, Some(NodeMask::EMPTY));
    assert!(walk(&p.first()).is_empty());
    // A home node on Preferred is ignored.
    let p = plan(
        &Policy::new(MemPolicy::Preferred(1)).with_home_node(3),
        0,
        &mut st,
        &d,
    );
    assert_eq!(p.as_slice(), &[anywhere(1)]);
    assert!(!p.is_empty());
}

#[test]
fn validate_rejects_bad_policies() {
    let ok = |p: Policy| p.validate(4);
    assert_eq!(ok(Policy::default()), Ok(()));
    assert_eq!(ok(Policy::new(MemPolicy::Local)), Ok(()));
    assert_eq!(ok(Policy::new(MemPolicy::Preferred(3))), Ok(()));
    assert_eq!(
        ok(Policy::new(MemPolicy::Preferred(4))),
        Err(PolicyError::NodeOutOfRange)
    );
    for mk in [
        MemPolicy::Bind,
        MemPolicy::PreferredMany,
        MemPolicy::Interleave,
    ] {
        assert_eq!(ok(Policy::new(mk(NodeMask::of(&[0, 3])))), Ok(()));
        assert_eq!(
            ok(Policy::new(mk(NodeMask::EMPTY))),
            Err(PolicyError::EmptyNodemask)
        );
        assert_eq!(
            ok(Policy::new(mk(NodeMask::of(&[1, 4])))),
            Err(PolicyError::NodeOutOfRange)
        );
    }
    let bind = Policy::new(MemPolicy::Bind(NodeMask::single(1)));
    assert_eq!(ok(bind.with_home_node(3)), Ok(()));
    assert_eq!(ok(bind.with_home_node(4)), Err(PolicyError::NodeOutOfRange));
    let many = Policy::new(MemPolicy::PreferredMany(NodeMask::single(1)));
    assert_eq!(ok(many.with_home_node(0)), Ok(()));
    for mode in [
        MemPolicy::Default,
        MemPolicy::Local,
        MemPolicy::Preferred(1),
        MemPolicy::Interleave(NodeMask::single(1)),
    ] {
        assert_eq!(
            ok(Policy::new(mode).with_home_node(1)),
            Err(PolicyError::HomeNodeNotSupported)
        );
    }
}

#[test]
fn policy_zone_gate() {
    assert!(policy_applies_to_zone(ZoneType::Normal, ZoneType::Normal));
    assert!(!policy_applies_to_zone(ZoneType::Dma32, ZoneType::Normal));
    assert!(policy_applies_to_zone(ZoneType::Dma32, ZoneType::Dma32));
}

fn any_mode() -> impl Strategy<Value = MemPolicy> {
    let mask = (1u64..16).prop_map(NodeMask::from_bits);
    prop_oneof![
        Just(MemPolicy::Default),
        Just(MemPolicy::Local),
        (0usize..4).prop_map(MemPolicy::Preferred),
        mask.clone().prop_map(MemPolicy::Bind),
        mask.clone().prop_map(MemPolicy::PreferredMany),
        mask.prop_map(MemPolicy::Interleave),
    ]
}

proptest! {
    #[test]
    fn plans_are_consistent_with_zonelist_walks(
        mode in any_mode(),
        home in prop::option::of(0usize..4),
        local in 0usize..4,
    ) {
        let policy = Policy { mode, home_node: home };
        prop_assume!(policy.validate(4).is_ok());
        let p = plan_for(policy, local);
        prop_assert_eq!(p.len(), if matches!(mode, MemPolicy::PreferredMany(_)) { 2 } else { 1 });
        for a in p.iter() {
            // The preferred node is where the walk starts.
            prop_assert_eq!(walk(&a).first().copied(), Some(a.preferred_node));
            if let Some(m) = a.nodemask {
                prop_assert!(m.contains(a.preferred_node));
                prop_assert!(walk(&a).iter().all(|&n| m.contains(n)));
            }
            prop_assert_eq!(a.no_reclaim_nowarn, a.nodemask.is_some() && p.len() == 2);
        }
        if p.len() == 2 {
            prop_assert_eq!(p.as_slice()[1].nodemask, None);
            prop_assert_eq!(p.as_slice()[1].zonelist_node, p.first().zonelist_node);
        }
    }
}

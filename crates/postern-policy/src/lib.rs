//! Policy conditions, resource traffic filters and their evaluation.
//!
//! Everything here is pure: no I/O, no clock reads (the current instant is
//! always passed in), no logging.

pub mod condition;
pub mod eval;
pub mod filter;
pub mod json;

pub use condition::{
    format_window_spec, parse_window_spec, Condition, ConditionError, DaySet, DayWindow,
    IpOperator, TimeWindow, WindowEnd,
};
pub use eval::{evaluate, Decision, DenyReason, EvalContext};
pub use filter::{
    filters_allow, format_ports, parse_ports, Filter, FilterError, PortRange, Protocol,
};

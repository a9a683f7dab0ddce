//! The two admin requests this daemon needs that rust-rdkafka 0.38 does not wrap, made through
//! librdkafka's C API (2.12):
//! - IncrementalAlterConfigs, for a group's configs. rust-rdkafka wraps only the legacy
//!   AlterConfigs, which resets every config of the group it does not name, and on which Kafka
//!   4.x does not check the values against the brokers' bounds (a value out of bounds is then
//!   stored and misbehaves); the incremental request is refused with the broker's reason.
//! - DescribeConsumerGroups, for the members of a group and their assignments on either
//!   protocol: the DescribeGroups that rust-rdkafka's `fetch_group_list` sends knows only
//!   groups of the classic protocol (a group of the consumer protocol is "Dead" to it).
//!
//! Each request gets a queue of its own and waits on it for its result (blocking: call it off
//! the async threads). Every librdkafka object made here is destroyed by a guard.

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::types::RDKafkaErrorCode;
use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

/// A failed request: librdkafka's or the broker's code and reason.
#[derive(Debug, thiserror::Error)]
#[error("{reason} ({code:?})")]
pub struct AdminError {
    pub code: RDKafkaErrorCode,
    pub reason: String,
}

impl AdminError {
    fn new(code: rd::rd_kafka_resp_err_t, reason: *const c_char) -> AdminError {
        AdminError { code: code.into(), reason: text(reason) }
    }
}

/// A group's members as the broker describes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDescription {
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub client_id: String,
    /// The id the broker gave the member.
    pub member_id: String,
    /// (topic, partition) of what it holds now.
    pub assignment: Vec<(String, i32)>,
}

/// Sets `configs` of the group `group` (e.g. `consumer.session.timeout.ms`), leaving its other
/// configs as they are. The broker refuses values outside its bounds, with its reason.
pub fn alter_group_configs<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    configs: &[(&str, String)],
    timeout: Duration,
) -> Result<(), AdminError> {
    let name = c_string(group)?;
    // SAFETY: every pointer passed is valid for the call; librdkafka copies the resource when
    // the request is made, and the guards destroy what was made here once it is answered.
    unsafe {
        let resource = Guard(
            rd::rd_kafka_ConfigResource_new(rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP, name.as_ptr()),
            rd::rd_kafka_ConfigResource_destroy,
        );
        for (key, value) in configs {
            let (key, value) = (c_string(key)?, c_string(value)?);
            let set = rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET;
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(resource.0, key.as_ptr(), set, value.as_ptr());
            if !error.is_null() {
                let error = Guard(error, rd::rd_kafka_error_destroy);
                return Err(AdminError::new(rd::rd_kafka_error_code(error.0), rd::rd_kafka_error_string(error.0)));
            }
        }
        let mut resources = [resource.0];
        let op = rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS;
        let event = request(client, op, timeout, |rk, options, queue| {
            rd::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), resources.len(), options, queue)
        })?;
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event.0);
        let mut count = 0;
        let answered = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        for i in 0..count {
            let resource = *answered.add(i);
            let code = rd::rd_kafka_ConfigResource_error(resource);
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(AdminError::new(code, rd::rd_kafka_ConfigResource_error_string(resource)));
            }
        }
        Ok(())
    }
}

/// The members of `group` and what each holds, on either protocol. A group that does not exist
/// has no members.
pub fn describe_group<C: ClientContext>(client: &Client<C>, group: &str, timeout: Duration) -> Result<GroupDescription, AdminError> {
    let name = c_string(group)?;
    // SAFETY: as above; the description's strings and lists belong to the event, which lives
    // until the end of this block, and are copied out before.
    unsafe {
        let mut names = [name.as_ptr()];
        let op = rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS;
        let event = request(client, op, timeout, |rk, options, queue| {
            rd::rd_kafka_DescribeConsumerGroups(rk, names.as_mut_ptr(), names.len(), options, queue)
        })?;
        let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event.0);
        let mut count = 0;
        let groups = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        let mut description = GroupDescription::default();
        if count == 0 {
            return Ok(description);
        }
        let group = *groups;
        let error = rd::rd_kafka_ConsumerGroupDescription_error(group);
        if !error.is_null() {
            let code = rd::rd_kafka_error_code(error);
            if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND {
                return Ok(description);
            }
            return Err(AdminError::new(code, rd::rd_kafka_error_string(error)));
        }
        for i in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(group) {
            let member = rd::rd_kafka_ConsumerGroupDescription_member(group, i);
            let partitions = rd::rd_kafka_MemberAssignment_partitions(rd::rd_kafka_MemberDescription_assignment(member));
            description.members.push(MemberDescription {
                client_id: text(rd::rd_kafka_MemberDescription_client_id(member)),
                member_id: text(rd::rd_kafka_MemberDescription_consumer_id(member)),
                assignment: topic_partitions(partitions),
            });
        }
        Ok(description)
    }
}

/// Makes a request with `send` (given the client, the request's options and the queue its
/// result comes to) and waits for its result, at most `timeout` and a second.
///
/// # Safety
/// `send` must make one admin request of kind `op` with the pointers it is given.
unsafe fn request<C: ClientContext>(
    client: &Client<C>,
    op: rd::rd_kafka_admin_op_t,
    timeout: Duration,
    send: impl FnOnce(*mut rd::rd_kafka_t, *const rd::rd_kafka_AdminOptions_t, *mut rd::rd_kafka_queue_t),
) -> Result<Guard<rd::rd_kafka_event_t>, AdminError> {
    let rk = client.native_ptr();
    let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
    let options = Guard(rd::rd_kafka_AdminOptions_new(rk, op), rd::rd_kafka_AdminOptions_destroy);
    let mut errstr = [0 as c_char; 512];
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    rd::rd_kafka_AdminOptions_set_request_timeout(options.0, millis, errstr.as_mut_ptr(), errstr.len());
    send(rk, options.0, queue.0);
    let event = rd::rd_kafka_queue_poll(queue.0, millis.saturating_add(1000));
    if event.is_null() {
        return Err(AdminError { code: RDKafkaErrorCode::OperationTimedOut, reason: format!("no answer within {timeout:?}") });
    }
    let event = Guard(event, rd::rd_kafka_event_destroy);
    let code = rd::rd_kafka_event_error(event.0);
    if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(AdminError::new(code, rd::rd_kafka_event_error_string(event.0)));
    }
    Ok(event)
}

/// A librdkafka object, destroyed when dropped.
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by librdkafka for this guard alone, destroyed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// # Safety
/// `list` is null or a valid partition list.
unsafe fn topic_partitions(list: *const rd::rd_kafka_topic_partition_list_t) -> Vec<(String, i32)> {
    if list.is_null() {
        return Vec::new();
    }
    let list = &*list;
    (0..list.cnt.max(0) as usize).map(|i| &*list.elems.add(i)).map(|p| (text(p.topic), p.partition)).collect()
}

/// A C string of librdkafka's, copied; empty for null.
fn text(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka's strings are NUL-terminated and live as long as their object.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn c_string(s: &str) -> Result<CString, AdminError> {
    CString::new(s).map_err(|_| AdminError { code: RDKafkaErrorCode::InvalidArgument, reason: format!("{s:?} holds a NUL byte") })
}

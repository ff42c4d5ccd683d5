//! Request routing of the hub, pure: a method and a (normalised, percent-encoded) URL path
//! in, a [`Route`] out.
//!
//! Agent ids in paths are percent-decoded and must be valid names (1-64 of
//! `[A-Za-z0-9._-]`); anything else is [`Route::NotFound`]. The SCIM forwarder accepts only
//! paths below `/Users`, `/Groups`, `/ServiceProviderConfig`, `/ResourceTypes` and
//! `/Schemas`; the forwarded path keeps its percent-encoding (an id may hold `%2F`).

use super::config::valid_name;

/// The SCIM resource endpoints the forwarder passes on (first path segment).
pub const SCIM_ENDPOINTS: [&str; 5] = [
    "Users",
    "Groups",
    "ServiceProviderConfig",
    "ResourceTypes",
    "Schemas",
];

/// An agent endpoint (agent token, `Idrelay-Protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    /// `POST /v1/agents/{agent}/poll`
    Poll,
    /// `POST /v1/agents/{agent}/responses`
    Responses,
    /// `POST /v1/agents/{agent}/heartbeat`
    Heartbeat,
}

impl AgentCall {
    /// The path's last segment.
    pub fn name(self) -> &'static str {
        match self {
            AgentCall::Poll => "poll",
            AgentCall::Responses => "responses",
            AgentCall::Heartbeat => "heartbeat",
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An agent endpoint of agent `.0`.
    Agent(String, AgentCall),
    /// `GET /`: the operator dashboard (a static page; its data comes from the API).
    Dashboard,
    /// `GET /v1/agents` (a page of it with a query: `listing`)
    ListAgents,
    /// `GET /v1/groups`: the summary per group
    ListGroups,
    /// `POST /v1/agents/{agent}/commands`
    Command(String),
    /// `GET /v1/requests/{id}`
    Request(String),
    /// `/agents/{agent}/scim/v2/{path}`: agent, path below the SCIM base (starting `/`).
    Scim(String, String),
    /// `/agents/{agent}/scim/v2/...` outside the forwarded endpoints.
    ScimNotFound,
    /// A known path with another method; `.0` lists the allowed one.
    MethodNotAllowed(&'static str),
    /// Nothing here.
    NotFound,
}

/// Routes `method` `path` (the URL path, still percent-encoded).
pub fn route(method: &str, path: &str) -> Route {
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let post = |r: Route| {
        if method == "POST" {
            r
        } else {
            Route::MethodNotAllowed("POST")
        }
    };
    let get = |r: Route| {
        if method == "GET" {
            r
        } else {
            Route::MethodNotAllowed("GET")
        }
    };
    match segs.as_slice() {
        [""] => get(Route::Dashboard),
        ["v1", "agents"] => get(Route::ListAgents),
        ["v1", "groups"] => get(Route::ListGroups),
        ["v1", "agents", agent, call] => {
            let Some(agent) = decode_name(agent) else {
                return Route::NotFound;
            };
            match *call {
                "poll" => post(Route::Agent(agent, AgentCall::Poll)),
                "responses" => post(Route::Agent(agent, AgentCall::Responses)),
                "heartbeat" => post(Route::Agent(agent, AgentCall::Heartbeat)),
                "commands" => post(Route::Command(agent)),
                _ => Route::NotFound,
            }
        }
        ["v1", "requests", id] => match decode_name(id) {
            Some(id) => get(Route::Request(id)),
            None => Route::NotFound,
        },
        ["agents", agent, "scim", "v2", rest @ ..] => {
            let Some(agent) = decode_name(agent) else {
                return Route::NotFound;
            };
            match rest.first() {
                Some(first) if SCIM_ENDPOINTS.contains(first) => {
                    Route::Scim(agent, format!("/{}", rest.join("/")))
                }
                _ => Route::ScimNotFound,
            }
        }
        _ => Route::NotFound,
    }
}

/// Percent-decodes one path segment into a valid name.
fn decode_name(seg: &str) -> Option<String> {
    let s = percent_decode(seg)?;
    valid_name(&s).then_some(s)
}

/// Percent-decodes `s` (UTF-8); `None` on a bad escape or bad UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn agent_and_operator_routes() {
        assert_eq!(
            route("POST", "/v1/agents/a1/poll"),
            Route::Agent("a1".into(), AgentCall::Poll)
        );
        assert_eq!(
            route("POST", "/v1/agents/branch%2D01/heartbeat"),
            Route::Agent("branch-01".into(), AgentCall::Heartbeat)
        );
        assert_eq!(
            route("POST", "/v1/agents/a1/responses"),
            Route::Agent("a1".into(), AgentCall::Responses)
        );
        assert_eq!(
            route("GET", "/v1/agents/a1/poll"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(route("GET", "/v1/agents"), Route::ListAgents);
        assert_eq!(route("POST", "/v1/agents"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "/v1/groups"), Route::ListGroups);
        assert_eq!(route("PUT", "/v1/groups"), Route::MethodNotAllowed("GET"));
        assert_eq!(
            route("POST", "/v1/agents/a1/commands"),
            Route::Command("a1".into())
        );
        assert_eq!(
            route("GET", "/v1/requests/r-1-000001"),
            Route::Request("r-1-000001".into())
        );
        assert_eq!(route("POST", "/v1/agents/a%2F1/poll"), Route::NotFound);
        assert_eq!(route("POST", "/v1/agents/a1/other"), Route::NotFound);
    }

    #[test]
    fn the_root_is_the_dashboard_for_get_only() {
        assert_eq!(route("GET", "/"), Route::Dashboard);
        assert_eq!(route("POST", "/"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "//"), Route::NotFound);
        assert_eq!(route("GET", "/index.html"), Route::NotFound);
        assert_eq!(route("GET", "/v1/agents/"), Route::NotFound);
    }

    #[test]
    fn scim_routes_keep_encoding_and_stay_inside_the_endpoints() {
        assert_eq!(
            route("GET", "/agents/a1/scim/v2/Users"),
            Route::Scim("a1".into(), "/Users".into())
        );
        assert_eq!(
            route("DELETE", "/agents/a1/scim/v2/Groups/ab%2Fcd%3D%3D"),
            Route::Scim("a1".into(), "/Groups/ab%2Fcd%3D%3D".into())
        );
        assert_eq!(
            route("POST", "/agents/a1/scim/v2/Users/.search"),
            Route::Scim("a1".into(), "/Users/.search".into())
        );
        assert_eq!(route("GET", "/agents/a1/scim/v2/Bulk"), Route::ScimNotFound);
        assert_eq!(route("GET", "/agents/a1/scim/v2/"), Route::ScimNotFound);
        assert_eq!(route("GET", "/agents/a1/scim/v2"), Route::ScimNotFound);
        assert_eq!(
            route("GET", "/agents/a1/scim/v2/users"),
            Route::ScimNotFound
        );
        assert_eq!(
            route("GET", "/agents/a1/scim/v2/UsersX"),
            Route::ScimNotFound
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    proptest! {
        #[test]
        fn routing_never_panics(method in "[A-Z]{1,7}", path in "/[ -~]{0,80}") {
            let _ = route(&method, &path);
        }

        #[test]
        fn forwarded_paths_start_with_an_endpoint(path in "/agents/a1/scim/v2/[A-Za-z%/.]{0,40}") {
            if let Route::Scim(_, p) = route("GET", &path) {
                let first = p[1..].split('/').next().unwrap();
                prop_assert!(SCIM_ENDPOINTS.contains(&first));
            }
        }
    }
}

"""A directory provisioning people and groups into Postern with scim2-client (the python-scim
project's SCIM 2.0 client, which checks every answer against the SCIM schemas): create, find,
deactivate, reactivate, rename and delete a user; create a group, add and remove members,
delete it; then a second client that knows nothing of the server configures itself from its
discovery endpoints (ResourceTypes, Schemas, ServiceProviderConfig) and reads with the models
it built. Exits non-zero on the first thing that is not as SCIM says.

Usage: POSTERN_SCIM_URL=http://127.0.0.1:8080/scim/v2 POSTERN_SCIM_TOKEN=postern_scim_... \
       python3 e2e/scim/directory.py
"""

import os
import sys
import uuid

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import (
    Email,
    Error,
    Group,
    GroupMember,
    ListResponse,
    PatchOp,
    PatchOperation,
    SearchRequest,
    User,
)


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    url = os.environ["POSTERN_SCIM_URL"].rstrip("/")
    token = os.environ["POSTERN_SCIM_TOKEN"]
    http = httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
    scim = SyncSCIMClient(http, resource_models=(User, Group))
    scim.register_naive_resource_types()

    email = f"grace.{uuid.uuid4().hex[:8]}@example.com"
    user = scim.create(
        User(
            user_name=email,
            external_id=f"ext-{email}",
            display_name="Grace Hopper",
            emails=[Email(value=email, primary=True)],
            active=True,
        )
    )
    check(isinstance(user, User) and user.id and user.user_name == email, "a user is created")
    check(user.external_id == f"ext-{email}", "with the directory's externalId")
    by_external = scim.query(User, query_parameters=SearchRequest(filter=f'externalId eq "ext-{email}"'))
    check(by_external.total_results == 1 and by_external.resources[0].id == user.id, "found by externalId")

    found = scim.query(User, query_parameters=SearchRequest(filter=f'userName eq "{email}"'))
    check(isinstance(found, ListResponse) and found.total_results == 1, "found by userName")
    check(found.resources[0].id == user.id, "the one created")

    again = scim.create(
        User(user_name=email, emails=[Email(value=email, primary=True)]), raise_scim_errors=False
    )
    check(isinstance(again, Error) and again.status == 409, "a second one with the email is a conflict")

    deactivate = PatchOp[User](operations=[PatchOperation[User](op="replace", path="active", value=False)])
    patched = scim.modify(User, user.id, deactivate)
    check(isinstance(patched, User) and patched.active is False, "deactivated")
    fetched = scim.query(User, user.id)
    check(fetched.active is False, "stays deactivated")
    reactivate = PatchOp[User](operations=[PatchOperation[User](op="replace", path="active", value=True)])
    check(scim.modify(User, user.id, reactivate).active is True, "reactivated")

    fetched.display_name = "Grace B. Hopper"
    fetched.active = True
    replaced = scim.replace(fetched)
    check(isinstance(replaced, User) and replaced.display_name == "Grace B. Hopper", "renamed with PUT")

    group = scim.create(Group(display_name="navy", members=[GroupMember(value=user.id)]))
    check(isinstance(group, Group) and len(group.members or []) == 1, "a group with the user")
    found = scim.query(Group, query_parameters=SearchRequest(filter='displayName eq "navy"'))
    check(isinstance(found, ListResponse) and found.total_results == 1, "the group found by name")
    remove = PatchOp[Group](
        operations=[PatchOperation[Group](op="remove", path=f'members[value eq "{user.id}"]')]
    )
    emptied = scim.modify(Group, group.id, remove)
    check(isinstance(emptied, Group) and not emptied.members, "the member removed")
    add = PatchOp[Group](
        operations=[PatchOperation[Group](op="add", path="members", value=[GroupMember(value=user.id)])]
    )
    check(len(scim.modify(Group, group.id, add).members or []) == 1, "the member added back")

    discovered = SyncSCIMClient(http)
    discovered.discover()
    DiscoveredUser = discovered.get_resource_model("User")
    DiscoveredGroup = discovered.get_resource_model("Group")
    check(DiscoveredUser is not None and DiscoveredGroup is not None, "discovery describes User and Group")
    by_name = discovered.query(DiscoveredUser, query_parameters=SearchRequest(filter=f'userName eq "{email}"'))
    check(
        by_name.total_results == 1 and by_name.resources[0].display_name == "Grace B. Hopper",
        "a discovering client reads the user with the published schema",
    )
    navy = discovered.query(DiscoveredGroup, group.id)
    check(len(navy.members or []) == 1, "and the group with its member")

    check(scim.delete(Group, group.id) is None, "the group deleted")
    check(scim.delete(User, user.id) is None, "the user deleted")
    gone = scim.query(User, user.id, raise_scim_errors=False)
    check(isinstance(gone, Error) and gone.status == 404, "the user is gone")


if __name__ == "__main__":
    main()

"""Members and accounts in the Project admin tab: who works on the project, adding them, creating accounts.

Accounts are made by ``users.add_account``, the service `medsam user add`
uses too. Left empty, the password is generated and shown once in the status
line (it is stored only as a hash), for the admin to pass on.
"""

from types import SimpleNamespace

import gradio as gr

from medsam_core.errors import MedsamError
from portal.store.services import projects, users, worklists
from portal.web.ui.common import need_project, reported
from portal.web.ui.context import PortalContext

ROLES = ["annotator", "reviewer", "admin"]


def layout(c: SimpleNamespace) -> None:
    with gr.Accordion("Members and accounts", open=True):
        c.members = gr.Dataframe(
            headers=["member", "role"], label="Members of this project", interactive=False, elem_id="admin-members"
        )
        with gr.Row():
            c.member = gr.Textbox(label="Add member (username)", elem_id="admin-member")
            c.member_btn = gr.Button("Add member", elem_id="admin-add-member")
        with gr.Row():
            c.new_user = gr.Textbox(label="New account: username", elem_id="admin-new-user")
            c.new_role = gr.Dropdown(ROLES, value="annotator", label="Role", elem_id="admin-new-role")
            c.new_password = gr.Textbox(
                label="Password (empty: generate one, shown once)", type="password", elem_id="admin-new-password"
            )
            c.new_member = gr.Checkbox(value=True, label="Add to this project", elem_id="admin-new-member")
            c.create_user = gr.Button("Create account", elem_id="admin-create-user")


def _rows(ctx: PortalContext, user, pid) -> list[list[str]]:
    return [[u.username, u.role.value] for u in ctx.read(projects.members, user, int(pid))] if pid else []


def handlers(ctx: PortalContext) -> SimpleNamespace:
    store = ctx.store

    def refresh(pid, request: gr.Request):
        try:
            return _rows(ctx, ctx.user(request), pid)
        except (gr.Error, MedsamError):  # not an admin, or no project: nothing to list, and no toast
            return []

    @reported(1)
    def add_member(pid, username, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        with store.transaction() as session:
            target = worklists.find_user(session, user, (username or "").strip())
            if target is None:
                raise gr.Error(f"There is no user '{username}'; create the account below.")
            projects.add_member(session, user, pid, target)
            name = target.username
        return f"✓ {name} is a member of project #{pid}.", _rows(ctx, user, pid)

    @reported(2)
    def create_account(pid, username, role, password, join, request: gr.Request):
        user = ctx.user(request)
        with store.transaction() as session:  # the account and its membership land together
            made = users.add_account(session, user, username or "", role, password or None)
            if join:
                projects.add_member(session, user, need_project(pid), made.user)
            name, role_name = made.user.username, made.user.role.value
        where = f" and added it to project #{pid}" if join else ""
        shown = (
            f" Its password, shown this once: `{made.password}` (pass it on; it is stored only as a hash)."
            if made.password
            else ""
        )
        gr.Info(f"Created {name}")
        return f"✓ Created the account **{name}** ({role_name}){where}.{shown}", _rows(ctx, user, pid), ""

    return SimpleNamespace(refresh=refresh, add_member=add_member, create_account=create_account)


def wire(ctx: PortalContext, c: SimpleNamespace) -> None:
    h = handlers(ctx)
    ctx.project.change(h.refresh, [ctx.project], [c.members])
    c.member_btn.click(h.add_member, [ctx.project, c.member], [c.status, c.members])
    c.create_user.click(
        h.create_account,
        [ctx.project, c.new_user, c.new_role, c.new_password, c.new_member],
        [c.status, c.members, c.new_password],
    )

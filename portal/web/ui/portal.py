"""The logged-in portal: assembles the Segment (demo), Annotate, Review, Train, Models and Project admin tabs.

Each tab lives in its own module and is built from a ``PortalContext``. Every
write goes through ``portal.store.services`` or the job queue on ``app.state``,
the same calls the REST API makes. Errors from them arrive as gr.Error
messages, and nothing is written when a request is refused.
"""

import gradio as gr

from portal.store.models import Role
from portal.store.services import worklists
from portal.web.ui.admin import build_admin_tab
from portal.web.ui.annotate import build_annotate_tab
from portal.web.ui.context import PortalContext
from portal.web.ui.review import build_review_tab
from portal.web.ui.segment import build_segment_tab
from portal.web.ui.train import build_train_tab
from portal.web.ui.versions import build_versions_tab

SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; const tag = (t && t.tagName || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || (t && t.isContentEditable)) return;
  const click = (id) => { const b = document.querySelector('#' + id); if (b) { e.preventDefault(); b.click(); } };
  if (e.altKey && (e.key === 'n' || e.key === 'ArrowRight')) click('ann-next');
  else if (e.altKey && (e.key === 'p' || e.key === 'ArrowLeft')) click('ann-prev');
  else if (e.altKey && e.key === 's') click('ann-save');
  else if (e.altKey && e.key === 'Enter') click('ann-submit');
});
</script>
"""

TABS = [
    ("Annotate", "annotate", build_annotate_tab),
    ("Review", "review", build_review_tab),
    ("Train", "train", build_train_tab),
    ("Models", "models", build_versions_tab),
    ("Project admin", "admin", build_admin_tab),
]
# Who may use each tab, as the services decide (reviewing, queueing fine-tunes and evaluations: reviewers and
# admins; promotion and project administration: admins). A tab one may not use is not shown at all.
TAB_ROLES = {
    "annotate": set(Role),
    "review": {Role.reviewer, Role.admin},
    "train": {Role.reviewer, Role.admin},
    "models": {Role.reviewer, Role.admin},
    "admin": {Role.admin},
}


def tab_visibility(role: Role) -> list[bool]:
    return [role in TAB_ROLES[tab_id] for _, tab_id, _ in TABS]


def build_portal(app_state, engine) -> gr.Blocks:
    """``app_state`` is FastAPI's ``app.state`` (store, settings, segmentation, queue)."""
    with gr.Blocks(title="MedSAM portal") as demo:
        with gr.Row():
            who = gr.Markdown(elem_id="who")
            project = gr.Dropdown(label="Project", choices=[], value=None, elem_id="project", scale=2)
            refresh_projects = gr.Button("↻ Projects", size="sm", scale=0)
        ctx = PortalContext(app_state, engine, project)
        with gr.Tabs():
            with gr.Tab("Segment (demo)", id="segment"):
                build_segment_tab(engine, ctx.settings, prefix="seg")
            tabs = []
            for title, tab_id, build in TABS:  # shown by the login's role once the page has loaded
                with gr.Tab(title, id=tab_id, visible=tab_id == "annotate", elem_id=f"tab-{tab_id}") as tab:
                    build(ctx)
                tabs.append(tab)

        def refresh_project_list(pid, request: gr.Request):
            user = ctx.user(request)
            choices = ctx.read(worklists.project_choices, user)
            ids = [v for _, v in choices]
            value = pid if pid in ids else (ids[0] if ids else None)
            return (
                f"**{user.username}** ({user.role.value}) · [log out](logout)",
                gr.update(choices=choices, value=value),
                *[gr.Tab(visible=v) for v in tab_visibility(user.role)],
            )

        demo.load(refresh_project_list, [project], [who, project, *tabs])
        refresh_projects.click(refresh_project_list, [project], [who, project, *tabs])
    return demo

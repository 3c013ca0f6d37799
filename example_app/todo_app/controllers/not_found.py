"""The 404 page, also rendered (with status 404) for unknown todo ids."""

from mountaineer import ControllerBase, Metadata, RenderBase


class NotFoundRender(RenderBase):
    pass


class NotFoundController(ControllerBase):
    url = "/not-found"
    view_path = "/app/not_found/page.tsx"

    async def render(self) -> NotFoundRender:
        return NotFoundRender(metadata=Metadata(title="Not found"))

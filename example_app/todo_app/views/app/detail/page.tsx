import React, { FormEvent, useState } from "react";
import { ActionError, rowId, useActionRunner, useDocumentTitle } from "../components";
import { useServer } from "./.mountaineer";

const Detail = () => {
  const serverState = useServer();
  const { todo } = serverState;
  const id = rowId(todo);
  const done = todo.done === true;
  const [description, setDescription] = useState(todo.description);
  const [saved, setSaved] = useState(false);
  const { error, busy, run } = useActionRunner(() => setSaved(false));
  useDocumentTitle(serverState.title);

  const onRename = async (event: FormEvent) => {
    event.preventDefault();
    setSaved(await run(() => serverState.rename_todo({ requestBody: { id, description } })));
  };

  return (
    <div className="card">
      <h2 className={done ? "done" : ""}>{todo.description}</h2>
      <p className="meta">
        #{id} · {done ? "done" : "open"} · created {todo.created_at ? new Date(todo.created_at).toUTCString() : "just now"}
      </p>
      <form onSubmit={onRename}>
        <input
          type="text"
          name="description"
          aria-label="Description"
          value={description}
          onChange={(event) => setDescription(event.target.value)}
        />
        <button type="submit" disabled={busy}>
          Rename
        </button>
        <button
          type="button"
          className="secondary"
          disabled={busy}
          onClick={() => run(() => serverState.toggle_todo({ requestBody: { id } }))}
        >
          {done ? "Mark open" : "Mark done"}
        </button>
      </form>
      <ActionError error={error} />
      {saved && <p className="meta">Saved.</p>}
      <p>
        <a href={serverState.linkGenerator.homeController()}>← All todos</a>
      </p>
    </div>
  );
};

export default Detail;

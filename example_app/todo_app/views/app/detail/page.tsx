import React, { FormEvent, useState } from "react";
import { ActionError, useActionRunner } from "../components";
import { useServer } from "./.mountaineer";

const Detail = () => {
  const serverState = useServer();
  const { todo } = serverState;
  const [description, setDescription] = useState(todo.description);
  const [saved, setSaved] = useState(false);
  const { error, busy, run } = useActionRunner(() => setSaved(false));

  const onRename = async (event: FormEvent) => {
    event.preventDefault();
    setSaved(await run(() => serverState.rename_todo({ requestBody: { id: todo.id, description } })));
  };

  return (
    <div className="card">
      <h2 className={todo.done ? "done" : ""}>{todo.description}</h2>
      <p className="meta">
        #{todo.id} · {todo.done ? "done" : "open"} · created {new Date(serverState.created_at).toUTCString()}
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
          onClick={() => run(() => serverState.toggle_todo({ requestBody: { id: todo.id } }))}
        >
          {todo.done ? "Mark open" : "Mark done"}
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

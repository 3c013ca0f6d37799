import React from "react";
import { useServer } from "./.mountaineer";

const NotFound = () => {
  const serverState = useServer();
  return (
    <div className="card">
      <h2>Not found</h2>
      <p>There is no such todo: it may have been deleted.</p>
      <p>
        <a href={serverState.linkGenerator.homeController()}>← All todos</a>
      </p>
    </div>
  );
};

export default NotFound;

import React from "react";
import { useServer } from "./.mountaineer";

const Home = () => {
  const serverState = useServer();

  return (
    <div className="p-6">
      <h1 className="text-2xl">Home</h1>
      <button onClick={async () => await serverState.new_detail({})}>New Item</button>
      <div>
        {serverState.items.map((item) => (
          <div key={item.id} className="p-2">
            {item.description}
          </div>
        ))}
      </div>
    </div>
  );
};

export default Home;

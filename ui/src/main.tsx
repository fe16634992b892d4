import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { getToken, setToken, setUnauthorizedHandler } from './api';
import { resetFeeds } from './store';
import { useRoute, navigate } from './router';
import { Layout } from './components/Layout';
import { Login } from './pages/Login';
import { Dashboard } from './pages/Dashboard';
import { VmList } from './pages/VmList';
import { VmDetail } from './pages/VmDetail';
import { VmCreate } from './pages/VmCreate';
import { Images } from './pages/Images';
import { Nodes } from './pages/Nodes';
import { Storage } from './pages/Storage';
import { Backups } from './pages/Backups';
import { ResourceList, ResourceGroup } from './pages/ResourceList';
import { ResourceDetail } from './pages/ResourceDetail';
import { ResourceCreate } from './pages/ResourceCreate';
import './style.css';

function Page({ route }: { route: string[] }) {
  const [top, a, b, c] = route;
  switch (top) {
    case undefined:
    case 'dashboard':
      return <Dashboard />;
    case 'vms':
      if (a === 'create') return <VmCreate />;
      if (a && b) return <VmDetail namespace={a} name={b} tab={c ?? 'overview'} />;
      return <VmList />;
    case 'images':
      return <Images />;
    case 'nodes':
      return <Nodes />;
    case 'storage':
      return <Storage />;
    case 'backups':
      return <Backups />;
    case 'networks':
      return <ResourceGroup title="Networks" ids={['networks', 'ippools', 'clusternetworks', 'vlanconfigs']} />;
    case 'templates':
      return <ResourceGroup title="Templates" ids={['templates', 'templateversions']} />;
    case 'settings':
      return <ResourceGroup title="Settings" ids={['backuptargets', 'namespaces', 'secrets', 'configmaps']} />;
    case 'r':
      if (a && b === 'create') return <ResourceCreate kindId={a} />;
      if (a && b && c) return <ResourceDetail kindId={a} namespace={b === '_' ? '' : b} name={c} />;
      if (a) return <ResourceList kindId={a} />;
      break;
  }
  return (
    <section>
      <h1>Not found</h1>
      <p>
        There is no page here. <a href="#/">Go to the dashboard</a>.
      </p>
    </section>
  );
}

function App() {
  const [token, setTok] = useState(getToken());
  const [notice, setNotice] = useState('');
  const route = useRoute();

  useEffect(() => {
    setUnauthorizedHandler((msg) => {
      resetFeeds();
      setNotice(`Your session ended: ${msg}`);
      setTok(null);
    });
  }, []);

  if (!token) {
    return (
      <Login
        notice={notice}
        onLogin={(t) => {
          setToken(t);
          setNotice('');
          setTok(t);
        }}
      />
    );
  }
  return (
    <Layout
      route={route}
      onLogout={() => {
        setToken(null);
        resetFeeds();
        setNotice('You have logged out.');
        setTok(null);
        navigate('/');
      }}
    >
      <Page route={route} />
    </Layout>
  );
}

render(<App />, document.getElementById('app')!);

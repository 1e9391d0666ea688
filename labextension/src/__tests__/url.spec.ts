import { apiPath, apiUrl, joinUrl, queryString } from '../url';

describe('apiUrl', () => {
  it('puts the API namespace under a root base URL', () => {
    expect(apiUrl('http://127.0.0.1:8888/', 'jobs')).toBe(
      'http://127.0.0.1:8888/training-manager/api/jobs'
    );
  });

  it('keeps a JupyterHub-style base URL', () => {
    expect(
      apiUrl('http://hub.example/user/ann/', 'jobs/3f9a1c2b7d10/logs', {
        rank: 1
      })
    ).toBe(
      'http://hub.example/user/ann/training-manager/api/jobs/3f9a1c2b7d10/logs?rank=1'
    );
  });

  it('works with a base URL without a trailing slash', () => {
    expect(apiUrl('/user/ann', 'resources')).toBe(
      '/user/ann/training-manager/api/resources'
    );
  });
});

describe('queryString', () => {
  it('leaves out undefined and null values and encodes the rest', () => {
    expect(
      queryString({ status: undefined, limit: 100, offset: null, q: 'a b&c' })
    ).toBe('?limit=100&q=a%20b%26c');
  });

  it('is empty when nothing is set', () => {
    expect(queryString({})).toBe('');
    expect(queryString({ status: undefined })).toBe('');
  });

  it('keeps zero and false', () => {
    expect(queryString({ cursor: 0, wait: false })).toBe(
      '?cursor=0&wait=false'
    );
  });
});

describe('apiPath and joinUrl', () => {
  it('encodes each segment so a name cannot escape it', () => {
    expect(apiPath('models', 'my model/../x', 'aliases', 'champion')).toBe(
      'models/my%20model%2F..%2Fx/aliases/champion'
    );
  });

  it('joins with exactly one slash', () => {
    expect(joinUrl('http://h/base/', '/a/', 'b')).toBe('http://h/base/a/b');
    expect(joinUrl('', 'a')).toBe('a');
  });
});
